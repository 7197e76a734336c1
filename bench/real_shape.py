"""Real shapes end to end: a briefly trained model served by the real server and attacked by the real scorer,
against the same artifact's forward in this process.

For each row (ResNet-18 on 64x64x3 with 200 classes, Tiny ImageNet's shape; the TRADES paper's small CNN on
28x28x1 with 10 classes, Fashion-MNIST's) the bench

1. writes a synthetic data set in the published layout (``python bench/fixtures.py``) and trains on it for
   one epoch with ``training/train_tiny.py --loss natural`` (its ``main``, in this process), which exports
   the artifact: an untrained network answers one class for every image, and a label-only attack then
   finds no starting point;
2. times ``classify`` (what the server's batcher runs) at the server's max batch size on the artifact loaded
   as the server loads it (``load_artifact``), with the server's torch threads: in-process images/s, the
   faster of a run before and one after the server (the machine's speed drifts; drift never flatters the
   server);
3. serves the artifact with ``python -m defense serve`` (defense/process.py) and scores it with
   ``python attacks/score.py --target ... --attacks hsja`` on a competition-format folder of the data set's
   first eval images: end-to-end images/s = the images the server answered (its ``--stats-file`` counters)
   / the scorer's wall time. The folder's labels are the model's own answers, so every image is attacked
   and the run spends its whole budget (this measures the load, not the model).

The ratio is what the whole chain (scorer, gRPC, server) delivers of what the model alone could.

    python bench/real_shape.py                       # both rows: a few minutes on 2 cores
    python bench/real_shape.py --fast                # a smoke run in seconds (the tests)

Ends with one ``name: value`` line per figure, among them ``real-shape end-to-end/in-process ratio: X``
(the ResNet-18 row) and ``small-cnn end-to-end/in-process ratio: X``. Exit codes: 0 done, 1 a command
failed (its log's tail is printed), 2 bad arguments.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avc_common.artifact import load_artifact
from avc_common.cli import HelpFormatter, add_json, positive_float, positive_int, text_stream, write_json
from avc_common.data import evalset
from avc_common.data.fashion_mnist import load_fashion_split
from avc_common.data.tiny_imagenet import load_tiny_imagenet
from defense.batcher import classify
from defense.process import ServerProcess, free_port, wait_serving
from defense.server import ServerConfig
from defense.stats import fresh
from training import train_tiny

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = ServerConfig()


@dataclass(frozen=True)
class Row:
    """One model of the table: what it is, the data set whose shape it takes, the prefix of its figure lines."""

    figure: str
    title: str
    arch: str
    dataset: str
    shape: tuple[int, int, int]
    classes: int


ROWS = {
    "resnet18": Row("real-shape", "ResNet-18 64x64x3, 200 classes", "resnet18", "tiny_imagenet", (64, 64, 3), 200),
    "smallcnn": Row("small-cnn", "small CNN 28x28x1, 10 classes", "small_cnn", "fashion_mnist", (28, 28, 1), 10),
}


@dataclass(frozen=True)
class Training:
    """The brief training of one row: training images per class, how many of them (0 = all), the batch."""

    per_class: int
    train_images: int
    batch_size: int


# ResNet-18: 400 images, 13 steps (a minute on 2 cores); --fast: 8 images of 8 classes, 2 steps.
TRAINING = {False: {"resnet18": Training(2, 0, 32), "smallcnn": Training(50, 0, 50)},
            True: {"resnet18": Training(1, 8, 4), "smallcnn": Training(10, 0, 20)}}
# --images, --budget, --max-batch-size, --duration-s when not given: the full run, then --fast
SIZES = {False: {"images": 10, "budget": 200, "max_batch_size": DEFAULTS.max_batch_size, "duration_s": 10.0},
         True: {"images": 2, "budget": 10, "max_batch_size": 2, "duration_s": 0.2}}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- pieces bench/gpu.py uses too ----------------------------------------------------------

class CommandFailed(RuntimeError):
    """A command exited with an unexpected status or ran out of time; the message ends with its log's tail."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


def log_tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").replace("\r", "\n").splitlines()[-lines:])


def run_command(argv: list[str], log_path: Path, timeout_s: float, ok: tuple[int, ...] = (0,)) -> int:
    """``python *argv`` from the repository root with its output in ``log_path``; its exit status.

    :class:`CommandFailed` for a status not in ``ok``, or after ``timeout_s``, when the command and every
    process it started (torch.compile's workers, say) are killed: it runs in a process group of its own.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", *argv])
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout_s)
        except BaseException as err:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if isinstance(err, subprocess.TimeoutExpired):
                raise CommandFailed(f"timed out after {timeout_s:.0f} s: {command}\n{log_tail(log_path)}",
                                    timed_out=True) from None
            raise
    if code not in ok:
        raise CommandFailed(f"exit {code}: {command}\n{log_tail(log_path)}")
    return code



def eval_folder(model: torch.nn.Module, images: np.ndarray, folder: Path,
                device: str | torch.device = "cpu") -> np.ndarray:
    """``images`` as a competition-format folder labelled with ``model``'s own answers (returned): every image
    is one the model classifies correctly, so the scorer attacks each of them."""
    labels = classify(model, images, device)
    evalset.write_folder(folder, images, labels)
    return labels


@dataclass
class EndToEnd:
    """One scorer run against one server: images the server answered, over the scorer's wall time."""

    queries: int
    wall_s: float
    images_per_s: float
    complete: bool  # False: the scorer ran out of time; the figures cover what it did until then
    error: str | None
    results: dict[str, Any] | None  # the scorer's results.json (None if it wrote none)


def end_to_end(artifact: Path, folder: Path, scorer_flags: list[str], work: Path, timeout_s: float, *,
               threads: int, max_batch_size: int, device: str = "cpu") -> EndToEnd:
    """Serve ``artifact`` (``python -m defense serve``, its counters in a stats file) and score it once with
    ``attacks/score.py --data folder *scorer_flags``; the images the server answered during the scorer's run.

    The wall time is the scorer's own (``session_wall_time_s`` in its results.json: from its start to its
    report, the interpreter's start-up left out). ``timeout_s`` bounds the server's start and the scorer's run
    together; a scorer stopped by it counts until then.
    """
    deadline = time.monotonic() + timeout_s
    work.mkdir(parents=True, exist_ok=True)
    port, stats_file = free_port(), work / "server-stats.json"
    argv = [sys.executable, "-m", "defense", "serve", "--model", str(artifact), "--host", "127.0.0.1",
            "--port", str(port), "--threads", str(threads), "--max-batch-size", str(max_batch_size),
            "--device", str(device), "--grace-s", "2", "--stats-file", str(stats_file)]
    with ServerProcess(argv, cwd=ROOT) as server:
        target = f"127.0.0.1:{port}"
        wait_serving(server, target, timeout_s=max(deadline - time.monotonic(), 1.0))
        before = fresh(stats_file, server.proc.pid)  # every call counted: SIGUSR1, then a snapshot taken after it
        start = time.perf_counter()
        error = None
        try:
            run_command(["attacks/score.py", "--target", target, "--data", str(folder), *scorer_flags,
                         "--output", str(work / "score"), "--no-progress"], work / "score.log",
                        max(deadline - time.monotonic(), 1.0))
        except CommandFailed as err:
            if not err.timed_out:
                raise
            error = str(err)
        elapsed = time.perf_counter() - start
        queries = fresh(stats_file, server.proc.pid).since(before).images
    report = work / "score" / "results.json"
    results = json.loads(report.read_text()) if report.exists() else None
    wall = results["summary"]["session_wall_time_s"] if error is None else elapsed
    return EndToEnd(queries, wall, queries / wall, error is None, error, results)


# --- the bench -----------------------------------------------------------------------------

def forward_rate(model: torch.nn.Module, shape: tuple[int, int, int], batch: int, duration_s: float) -> float:
    """Images/s of ``classify`` on ``batch`` images: the median call of at least 2, then until ``duration_s``."""
    images = evalset.fixture(shape, batch).images
    classify(model, images)  # warm-up: allocations, kernel choice
    times: list[float] = []
    stop = time.perf_counter() + duration_s
    while len(times) < 2 or time.perf_counter() < stop:
        start = time.perf_counter()
        classify(model, images)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def bench_row(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One row: fixture, brief training, in-process rate, one scorer run against the server, in-process again."""
    row, training = ROWS[name], TRAINING[args.fast][name]
    folder = work / name
    eval_per_class = math.ceil(args.images / row.classes)
    log(f"[{name}] writing the {row.dataset} fixture: {training.per_class} training images per class")
    data = folder / "data"
    run_command(["bench/fixtures.py", row.dataset, str(data), "--classes", str(row.classes), "--per-class",
                 str(training.per_class), "--eval-per-class", str(eval_per_class)], folder / "fixture.log",
                args.timeout_s)
    log(f"[{name}] training {row.arch} for one epoch (natural loss, batch {training.batch_size})")
    start = time.perf_counter()
    # In this process: the training is set-up, not measured, and a second interpreter would import timm again.
    with contextlib.redirect_stdout(sys.stderr):  # its summary joins this log; standard output is the report's
        code = train_tiny.main([
            "--dataset", row.dataset, "--data", str(data), "--arch", row.arch, "--loss", "natural", "--epochs", "1",
            "--batch-size", str(training.batch_size), "--augment", "none", "--train-images",
            str(training.train_images), "--eval-images", "0", "--final-eval-images", str(args.images),
            "--eval-steps", "1", "--device", "cpu", "--threads", str(args.threads), "--output",
            str(folder / "train"), "--no-progress"])
    if code:
        raise CommandFailed(f"training/train_tiny.py exited {code} (its messages are above)")
    artifact = folder / "train" / "artifact"
    train_s = time.perf_counter() - start
    loaded = load_artifact(artifact)
    if row.dataset == "tiny_imagenet":
        images = load_tiny_imagenet(data, "val", progress=False).images[:args.images]
    else:
        images = load_fashion_split(data, "test")[0][:args.images]
    answers = eval_folder(loaded.model, images, folder / "eval")
    log(f"[{name}] in-process classify at batch {args.max_batch_size} ({args.threads} torch threads)")
    before = forward_rate(loaded.model, row.shape, args.max_batch_size, args.duration_s)
    log(f"[{name}]   {before:.1f} images/s; serving and scoring: hsja, budget {args.budget}, {args.images} images")
    run = end_to_end(artifact, folder / "eval", ["--attacks", "hsja", "--budget", str(args.budget),
                                                 "--images", str(args.images), "--seed", "0"],
                     folder, args.timeout_s, threads=args.threads, max_batch_size=args.max_batch_size)
    if not run.complete:
        raise CommandFailed(run.error)
    log(f"[{name}]   {run.queries} queries in {run.wall_s:.1f} s: {run.images_per_s:.1f} images/s; "
        f"in-process again (drift check)")
    after = forward_rate(loaded.model, row.shape, args.max_batch_size, args.duration_s)
    in_process = max(before, after)
    return {"row": name, "title": row.title, "figure": row.figure, "train_s": train_s,
            "val_accuracy": loaded.manifest["metrics"].get("clean_accuracy"),
            "distinct_answers": len(set(answers.tolist())), "images": len(answers),
            "in_process_images_per_s": in_process, "in_process_before": before, "in_process_after": after,
            "end_to_end": {k: v for k, v in asdict(run).items() if k != "results"},
            "scorer_summary": run.results["summary"], "ratio": run.images_per_s / in_process}


def summarise(rows: list[dict[str, Any]], args: argparse.Namespace, machine: str) -> list[tuple[str, float]]:
    """Print the table (to the text stream of ``--json``); the figures, in the order of their lines."""
    out = text_stream(args.json)
    print(f"\nReal shapes end to end on {machine}: {args.threads} torch threads (server, training, in-process), "
          f"server max batch {args.max_batch_size}; scorer: hsja, budget {args.budget}, {args.images} images "
          f"labelled with the model's answers; ratio = end-to-end images/s / in-process images/s", file=out)
    print(f"  {'row':<32}{'in-process/s':>13}{'end-to-end/s':>13}{'ratio':>7}{'queries':>9}{'wall s':>8}"
          f"{'answers':>9}{'val acc':>8}", file=out)
    figures: list[tuple[str, float]] = []
    for r in rows:
        e2e = r["end_to_end"]
        acc = r["val_accuracy"]
        print(f"  {r['title']:<32}{r['in_process_images_per_s']:>13.1f}{e2e['images_per_s']:>13.1f}"
              f"{r['ratio']:>7.2f}{e2e['queries']:>9}{e2e['wall_s']:>8.1f}"
              f"{r['distinct_answers']:>4}/{r['images']:<4}{'-' if acc is None else format(acc, '.2f'):>8}", file=out)
        figures += [(f"{r['figure']} in-process images/s", r["in_process_images_per_s"]),
                    (f"{r['figure']} end-to-end images/s", e2e["images_per_s"]),
                    (f"{r['figure']} end-to-end/in-process ratio", r["ratio"])]
    print(f"  (answers: distinct classes the model gave the scored images; val acc: its accuracy on {args.images} "
          f"val images after the brief training, train_tiny's final evaluation)", file=out)
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows, from: {', '.join(ROWS)}")
    p.add_argument("--fast", action="store_true",
                   help="a smoke run in seconds: tiny training, batch and budget (the tests)")
    sizes = SIZES[False], SIZES[True]
    p.add_argument("--images", metavar="N", type=positive_int, default=None,
                   help=f"images the scorer attacks (default: {sizes[0]['images']}; --fast: {sizes[1]['images']})")
    p.add_argument("--budget", metavar="QUERIES", type=positive_int, default=None,
                   help=f"HSJA's queries per image (default: {sizes[0]['budget']}; --fast: {sizes[1]['budget']})")
    p.add_argument("--max-batch-size", metavar="N", type=positive_int, default=None,
                   help="the server's --max-batch-size and the in-process batch (default: the server's, "
                        f"{sizes[0]['max_batch_size']}; --fast: {sizes[1]['max_batch_size']})")
    p.add_argument("--duration-s", type=positive_float, default=None,
                   help=f"seconds of each in-process timing, at least 2 calls (default: {sizes[0]['duration_s']}; "
                        f"--fast: {sizes[1]['duration_s']})")
    p.add_argument("--threads", metavar="N", type=positive_int, default=min(os.cpu_count() or 1, 2),
                   help="torch threads of the server, the training and the in-process reference")
    p.add_argument("--timeout-s", type=positive_float, default=1800.0,
                   help="time limit of the fixture's writer, and of the server's start and the scorer's run")
    add_json(p, "every figure")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ROWS))
    if unknown or not names:
        p.error(f"--rows: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(ROWS)}")
    for key, value in SIZES[args.fast].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    torch.set_num_threads(args.threads)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    with tempfile.TemporaryDirectory(prefix="bench-real-shape-") as tmp:
        try:
            rows = [bench_row(name, args, Path(tmp)) for name in names]
        except CommandFailed as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    figures = summarise(rows, args, machine)
    out = text_stream(args.json)
    write_json(args.json, json.dumps({"machine": machine, "args": {k: v for k, v in vars(args).items()
                                                                     if k != "json"},
                                      "rows": rows, "figures": dict(figures)}, indent=2, default=str) + "\n")
    print(file=out)
    for name, value in figures:
        print(f"{name}: {value:.2f}", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
