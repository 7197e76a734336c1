"""Score a model the way the Adversarial Vision Challenge did: the smallest label-flipping L2 perturbation per image.

    python attacks/score.py --target localhost:50051                  # the served model, top-5 suite
    python attacks/score.py --model runs/fmnist-trades/artifact \\
        --surrogate runs/surrogate/artifact --images 200 --output runs/score-trades
    python attacks/score.py --target HOST:PORT --data eval_folder/ --attacks hsja,geoda --pooled
    python attacks/score.py --model DIR --dataset tiny_imagenet --data /data/tiny-imagenet-200

Each attack gets the query budget on each image; an image's distance is the minimum over
the attacks of the verified L2 on [0, 1]; the score is the mean and median over images
(docs/scoring.md). With --chain each attack starts from the best adversarials of those
before it (the same queries, a tighter bound; not the competition's rule). Results are
written as each chunk of images finishes; rerunning the same command with the same --output
resumes and ends with the same report.

Exit codes: 0 done; 1 unexpected failure; 2 bad input (flags, data, model or surrogate
folders, an --output holding a different run, TLS files, a token the server refuses); 3
the model server stayed unavailable (or refused for its own budget) after the client's
retries, partial results saved: rerun to resume; 130 interrupted (Ctrl-C), partial
results saved.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from attacks import (
    ATTACKS,
    PRESETS,
    ArtifactModel,
    Attack,
    RemoteModel,
)
from attacks.scoring.api import DEFAULT_CONCURRENCY, BadInput, Results, check_resumable, named_suite
from attacks.scoring.api import fingerprint as run_fingerprint
from attacks.scoring.evaldata import DATASETS, SAMPLING, EvalDataError, load_eval_data, pick
from attacks.scoring.pipeline import ChunkResult, SuiteRun, collect, worst_case_l2
from attacks.scoring.report import RunInfo, console, header
from attacks.whitebox.reference import minimal_l2
from attacks.whitebox.surrogate import load_ensemble, load_surrogate
from avc_common.atomic import atomic_write_text
from avc_common.cli import (
    HelpFormatter,
    add_data,
    add_device,
    add_json,
    add_output,
    add_progress,
    non_negative_int,
    positive_float,
    positive_int,
    program,
    text_stream,
    write_json,
)
from avc_common.images import ModelSpec
from avc_common.rpc.client import (
    BACKOFF_S,
    BudgetExhaustedError,
    DefenseClient,
    DefenseError,
    ServerUnavailableError,
    UnauthenticatedError,
    unreachable_wait_s,
)
from avc_common.rpc.credentials import CredentialsError, add_client_arguments, client_credentials
from avc_common.rpc.targets import TargetError, channel_target

if TYPE_CHECKING:  # imported for real only with --ray: the default install has no Ray
    from attacks.scoring.distributed import RayWorkers

OK, FAILED, BAD_INPUT, MODEL_UNAVAILABLE, INTERRUPTED = 0, 1, 2, 3, 130
DEFAULT_IMAGES = 100


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=program("python attacks/score.py"), description=__doc__.split("\n")[0],
                                epilog="Exit codes: 0 done, 1 failure, 2 bad input, 3 server unavailable "
                                       "(partial results saved; rerun to resume), 130 interrupted.",
                                formatter_class=HelpFormatter)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--target", metavar="HOST:PORT", type=replicas,
                       help="a defense server (label-only gRPC), or several replicas of one: HOST:PORT,HOST:PORT,... "
                            "or a gRPC name that resolves to several (dns:///NAME:PORT, ipv4:IP:PORT,IP:PORT); calls "
                            "go round-robin over the replicas that are up and serving (docs/scaling.md)"),
    model.add_argument("--model", type=Path, metavar="DIR",
                       help="a model artifact folder, run in-process; also computes the white-box reference")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", choices=DATASETS, default=None,
                   help="what --data holds: the Fashion-MNIST test set (fashion_mnist_64: as the 64x64x3 proxy of "
                        "the competition's shape, docs/scoring.md), the Tiny ImageNet val set, or a "
                        "competition-format folder of .npy uint8 H x W x C images with labels.yml (default: "
                        "folder if --data is given, else fashion_mnist)")
    add_data(d, "the data set's folder (fashion_mnist, fashion_mnist_64: default /usr/share/datasets/fashion-mnist; "
                "tiny_imagenet: the folder with wnids.txt and val/; folder: the .npy files and labels.yml)")
    d.add_argument("--images", metavar="N", type=positive_int, default=None,
                   help=f"how many images to score (default: {DEFAULT_IMAGES}, or all if the data holds fewer)")
    d.add_argument("--sample", choices=SAMPLING, default="first",
                   help="the first --images images, or a random choice seeded by --seed")
    s = p.add_argument_group("suite and budget")
    suite = s.add_mutually_exclusive_group()
    suite.add_argument("--preset", default="top5", help=f"a named suite: {', '.join(sorted(PRESETS)) or 'none yet'}")
    suite.add_argument("--attacks", default=None, metavar="A,B,...",
                       help=f"comma-separated attacks at their defaults instead of a preset: {', '.join(ATTACKS)}")
    s.add_argument("--surrogate", type=Path, action="append", default=[], metavar="DIR",
                   help="a surrogate model artifact for the transfer attacks (repeat for an ensemble)")
    s.add_argument("--budget", metavar="QUERIES", type=positive_int, default=1000,
                   help="queries each attack may spend per image")
    s.add_argument("--pooled", action="store_true",
                   help="the competition's pooled rule: each attack may spend budget x images of a chunk "
                        "wherever it likes, instead of budget on each image")
    s.add_argument("--chain", action="store_true",
                   help="start each attack from the closest adversarials of the attacks before it on the same images "
                        "(each still spends its own budget): a stronger suite for the same queries, unlike the "
                        "competition's independent attacks; an attack's figures are then the best after it")
    s.add_argument("--seed", type=non_negative_int, default=0,
                   help="seeds every attack (per chunk and attack) and --sample random")
    s.add_argument("--batch-images", metavar="N", type=positive_int, default=100,
                   help="images attacked together (one chunk; every model call carries many of them); results "
                        "are saved after each chunk")
    r = p.add_argument_group("white-box reference (--model only)")
    r.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                   help="compute the FMN minimal-norm distance per image with the model's gradients")
    r.add_argument("--reference-steps", metavar="N", type=positive_int, default=1000, help="FMN steps per run")
    o = p.add_argument_group("running")
    add_output(o, Path("runs/score"), "results.json, report.md, cdf.png, gallery.png, adversarials.npz, adversarials/ "
                                        "and state/ (resume)")
    add_json(o, "results.json")
    add_device(o, what="--model, the white-box reference and the surrogate attacks' gradients")
    timeout_s, retries = 30.0, 5  # the defaults of --timeout-s and --retries, for --retries' figures
    o.add_argument("--timeout-s", metavar="SECONDS", type=positive_float, default=timeout_s,
                   help="--target: the deadline of a call on an idle server; a Predict's also grows with its "
                        "images and the server's queue, at the server's measured time per image, and a Predict "
                        "that runs out of time while the server still answers is sent again (up to --max-wait-s)")
    o.add_argument("--max-wait-s", metavar="SECONDS", type=positive_float, default=3600.0,
                   help="--target: the longest one Predict is waited for on a busy server, re-sent included")
    o.add_argument("--concurrency", metavar="N", type=positive_int, default=None,
                   help="units of work (one attack on one chunk) run at once in threads, each with its own "
                        "requests in flight; the results do not depend on it, so a resumed run may change it "
                        f"(default: {DEFAULT_CONCURRENCY['target']} with --target, to keep the server's batches "
                        f"full; {DEFAULT_CONCURRENCY['model']} with --model, whose in-process forwards have nothing "
                        f"to batch)")
    refused_s, silent_s = unreachable_wait_s(retries, timeout_s)
    o.add_argument("--retries", metavar="N", type=non_negative_int, default=retries,
                   help=f"--target: retries (pauses doubling from {BACKOFF_S} s) while the server is unavailable, "
                        f"before giving up (exit 3). Where no server has answered yet, a refused connection or an "
                        f"unknown host fails each attempt at once: given up after the pauses alone ({refused_s:.1f} s "
                        f"with the defaults); a host that does not answer also costs --timeout-s an attempt, and so "
                        f"does a server that answered and has gone, which may be restarting ({silent_s:.0f} s)")
    add_client_arguments(o)  # --target: TLS and the bearer token (docs/grpc.md "Security")
    add_progress(o)
    add_distributed_arguments(p)
    return p


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    """``--ray``, ``--ray-address`` and ``--workers``: units on Ray workers instead of this process's threads."""
    g = parser.add_argument_group("distributed scoring (Ray; pip install 'trades-avc[ray]'; docs/scaling.md)")
    where = g.add_mutually_exclusive_group()
    where.add_argument("--ray", action="store_true",
                       help="run the units on Ray workers on this machine (a local Ray cluster started for the run); "
                            "the per-image results and the --output folder are those of a single-process run, and "
                            "verification, the reference and the reports stay in this process")
    where.add_argument("--ray-address", metavar="ADDR",
                       help="the same on the Ray cluster at ADDR (auto, HOST:6379, or ray://HOST:10001 with "
                            "ray[client]); its nodes need this project installed and must reach --target, or "
                            "--model and the --surrogate folders at the same paths")
    g.add_argument("--workers", metavar="N", type=positive_int, default=None,
                   help="Ray workers, each with one CPU and one torch thread, running one unit at a time with its "
                        "own model and surrogates, loaded once (default: one per CPU of the Ray cluster); like "
                        "--concurrency it does not change the results, so a resumed run may change it")


def replicas(text: str) -> str:
    """An argparse ``type`` for ``--target``: ``text`` if it names at least one address (a list's host names are
    resolved here, once, and again by the client)."""
    try:
        channel_target(text)
    except TargetError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def distributed(args: argparse.Namespace) -> bool:
    return args.ray or args.ray_address is not None


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The flags, with ``--dataset`` defaulted from ``--data`` (exits 2 on a bad one, before any work)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data is not None and args.dataset is None and str(args.data) in DATASETS and not args.data.exists():
        parser.error(f"--data is the data set's folder; name the data set with --dataset {args.data}")
    if args.dataset is None:
        args.dataset = "folder" if args.data is not None else "fashion_mnist"
    if distributed(args):
        if importlib.util.find_spec("ray") is None:
            parser.error(f"--{'ray' if args.ray else 'ray-address'}: Ray is not installed here; "
                         f"pip install 'trades-avc[ray]'")
        if args.concurrency is not None:
            parser.error("--concurrency: not with --ray or --ray-address, where each of the --workers runs one unit "
                         "at a time")
    elif args.workers is not None:
        parser.error("--workers: only with --ray or --ray-address")
    if args.concurrency is None:
        args.concurrency = DEFAULT_CONCURRENCY["target" if args.target is not None else "model"]
    return args


def build_attacks(args: argparse.Namespace) -> tuple[dict[str, Attack], list[str]]:
    """The suite by column name (a preset's or --attacks'), and notes about what a preset left out.

    Each surrogate is checked by loading it on ``--device``, where its attacks will run: one load per process
    (:func:`load_surrogate` caches it), where a cpu check and a cuda run would load every surrogate twice.
    """
    for path in args.surrogate:
        try:
            load_surrogate(str(path), args.device)
        except (ValueError, OSError) as err:
            raise BadInput(f"--surrogate {path}: {err}") from None
    return named_suite(args.preset, None if args.attacks is None else args.attacks.split(","),
                       tuple(str(path) for path in args.surrogate), args.device, prefix="--")


def check_surrogates(args: argparse.Namespace, spec: ModelSpec) -> None:
    """Refuse a --surrogate that takes other images or classes than the model scored, before any attack runs
    (the transfer attacks would fail on it mid-run)."""
    if args.surrogate:
        try:
            load_ensemble([str(path) for path in args.surrogate], spec.shape, spec.num_classes, device=args.device)
        except ValueError as err:
            raise BadInput(f"--surrogate: {err}") from None


def open_model(args: argparse.Namespace) -> tuple[Any, dict[str, Any], list[str]]:
    """The label-only model, its description for the report, and its class names."""
    if args.model is not None:
        remote = [flag for flag in ("tls_ca", "tls_cert", "tls_key", "tls_server_name", "token_file")
                  if getattr(args, flag) is not None]
        if remote:
            raise BadInput(f"--{remote[0].replace('_', '-')}: only with --target (--model runs in-process)")
        try:
            model = ArtifactModel(args.model, device=args.device)
        except (ValueError, OSError) as err:
            raise BadInput(f"--model {args.model}: {err}") from None
        return model, {"artifact": str(args.model), "manifest": model.manifest}, list(model.manifest["class_names"])
    try:
        tls, token = client_credentials(args)
    except CredentialsError as err:
        raise BadInput(str(err)) from None
    client = connect(args, tls, token)
    try:
        model = RemoteModel(client)
    except UnauthenticatedError as err:  # bad credentials are bad input: no retry, and resuming would not help
        client.close()
        raise BadInput(f"--token-file: the model server at {args.target} refused this client's token "
                       f"({'none was given' if token is None else 'from --token-file or $AVC_TOKEN'}): {err}") from None
    spec = client.info()
    return model, {"target": args.target, "info": asdict(spec)}, list(spec.class_names)


def connect(args: argparse.Namespace, tls: Any, token: str | None) -> DefenseClient:
    """The client of ``--target``'s replicas, skipping any whose health says NOT_SERVING (one that is draining)."""
    return DefenseClient(args.target, timeout_s=args.timeout_s, retries=args.retries, max_wait_s=args.max_wait_s,
                         tls=tls, token=token, health_checked=True)


def worker_setup(args: argparse.Namespace, tls: Any, token: str | None) -> tuple[Any, dict[str, Attack]]:
    """What one Ray worker scores with, made once in its process: the suite (surrogates loaded on its device) and
    its own model, a client of the replicas or the artifact. A cuda --device means the GPU Ray gave the worker."""
    if args.device.type == "cuda":
        args = argparse.Namespace(**{**vars(args), "device": torch.device("cuda")})
    suite, _ = build_attacks(args)
    if args.model is not None:
        return ArtifactModel(args.model, device=args.device), suite
    return RemoteModel(connect(args, tls, token)), suite


def start_workers(args: argparse.Namespace, suite: dict[str, Attack]) -> RayWorkers:
    """The Ray workers of ``--ray``/``--ray-address`` (:mod:`attacks.scoring.distributed`), started and checked."""
    from attacks.scoring import distributed as ray_workers  # only here: the default install has no Ray

    try:
        tls, token = client_credentials(args) if args.target is not None else (None, None)
        return ray_workers.start(partial(worker_setup, args, tls, token),
                                 {name: repr(attack) for name, attack in suite.items()}, args.ray_address,
                                 args.workers, gpus=args.device.type == "cuda")
    except (ray_workers.WorkersError, CredentialsError) as err:
        raise BadInput(str(err)) from None


def fingerprint(args: argparse.Namespace, suite: dict[str, Attack], model: Any, images: np.ndarray,
                labels: np.ndarray, indices: np.ndarray) -> dict[str, Any]:
    """Everything the results depend on (:func:`attacks.scoring.api.fingerprint`); a resumed run must match it."""
    return run_fingerprint(suite, model, images, labels, indices, args.budget, args.pooled, args.seed,
                           args.batch_images, args.reference_steps if reference_wanted(args) else None, args.chain)


def reference_wanted(args: argparse.Namespace) -> bool:
    return args.model is not None and args.reference


def write_reports(output: Path, info: RunInfo, chunks: list[ChunkResult], data: dict[str, Any],
                  started: float, complete: bool, error: str | None = None) -> dict[str, Any]:
    """results.json, report.md, cdf.png, gallery.png and the exported adversarials (adversarials.npz and the
    competition-format adversarials/) for the chunks done so far (atomically)."""
    wall = time.perf_counter() - started
    if not chunks:
        results = {**header(), "complete": False, "error": error, "command": info.command, "model": info.model,
                   "data": info.data, "summary": None, "images": []}
        atomic_write_text(output / "results.json", json.dumps(results, indent=1) + "\n")
        return results
    return Results(collect(chunks, list(info.attacks)), info, data["images"], data["labels"], data["indices"],
                   data["names"], wall, complete, error).save(output, keep_names=info.data["dataset"] == "folder")


def main(argv: Sequence[str] | None = None) -> int:
    """``python attacks/score.py`` / ``avc-score``: score the model, write the reports; the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    started = time.perf_counter()
    command = shlex.join(["python", "attacks/score.py", *argv])
    try:
        suite, notes = build_attacks(args)
        model, model_info, class_names = open_model(args)
        check_surrogates(args, model.info)
        evalset = load_eval_data(args.dataset, args.data, model.info.shape, model.info.num_classes, args.progress)
        total = len(evalset.images)
        indices = pick(min(DEFAULT_IMAGES, total) if args.images is None else args.images, total, args.sample,
                       args.seed)
        images, labels = evalset.images[indices], evalset.labels[indices]
        args.output.mkdir(parents=True, exist_ok=True)
        check_resumable(args.output, fingerprint(args, suite, model, images, labels, indices), flag="--output",
                        how="rerun its exact command")
        runner = start_workers(args, suite) if distributed(args) else None
    except (BadInput, EvalDataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return BAD_INPUT
    except ServerUnavailableError as err:  # it says where, for how long and why
        print(f"error: {err}", file=sys.stderr)
        return MODEL_UNAVAILABLE
    except DefenseError as err:
        print(f"error: cannot reach the model server at {args.target} ({err})", file=sys.stderr)
        return MODEL_UNAVAILABLE
    if runner is not None:
        notes.append(f"{runner.workers} Ray worker(s) ran the units, on {', '.join(runner.hosts())}")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)

    reference = (partial(minimal_l2, model.net, steps=args.reference_steps, device=args.device)
                 if reference_wanted(args) else None)
    info = RunInfo(command, model_info, class_names,
                   {"dataset": args.dataset, "data": str(args.data) if args.data else None,
                    "sample": args.sample, "images": len(indices), "of": total},
                   args.budget, args.pooled, args.seed, args.batch_images,
                   {name: repr(attack) for name, attack in suite.items()}, notes,
                   args.concurrency if runner is None else runner.workers, None if runner is None else runner.workers,
                   args.chain)
    data = {"indices": indices, "names": [evalset.names[i] for i in indices], "labels": labels, "images": images,
            "worst": worst_case_l2(images)}
    run = SuiteRun(model, images, labels, suite, args.output / "state", args.budget, args.pooled, args.seed,
                   args.batch_images, reference, args.progress, args.concurrency, runner, args.chain)
    try:
        run.run(lambda chunks: write_reports(args.output, info, chunks, data, started, complete=False))
    except DefenseError as err:
        if isinstance(err, BudgetExhaustedError):  # the server's budget lasts its lifetime: a plain rerun cannot help
            what, then = "refused the queries", "resume with the same command once the server has budget left for you"
        else:
            what = "stopped answering" if isinstance(err, ServerUnavailableError) else "refused the queries"
            then = "rerun the same command to resume"
        message = (f"the model server at {args.target} {what} ({err}); partial results for "
                   f"{sum(len(c.verified_labels) for c in run.chunks)} image(s) are in {args.output}: {then}")
        write_reports(args.output, info, run.chunks, data, started, complete=False, error=message)
        print(f"error: {message}", file=sys.stderr)
        return MODEL_UNAVAILABLE
    except KeyboardInterrupt:
        write_reports(args.output, info, run.chunks, data, started, complete=False, error="interrupted")
        print(f"\ninterrupted: partial results in {args.output}; rerun the same command to resume", file=sys.stderr)
        return INTERRUPTED
    finally:
        if runner is not None:
            runner.close()
    results = write_reports(args.output, info, run.chunks, data, started, complete=True)
    write_json(args.json, json.dumps(results, indent=1) + "\n")
    print(console(results, str(args.output)), file=text_stream(args.json))
    return OK


if __name__ == "__main__":
    sys.exit(main())
