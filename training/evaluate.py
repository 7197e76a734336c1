"""White-box evaluation of a model artifact or a training checkpoint: clean, PGD-k and AutoAttack accuracy.

    python training/evaluate.py --model runs/train/artifact
    python training/evaluate.py --model runs/train/checkpoint.pt --norm l2 --epsilon 0.5
    python training/evaluate.py --model runs/train/artifact --attack autoattack --images 1000

Runs PGD with every loss in ``--losses`` (CE and the CW margin by default), ``--restarts``
random starts each, and reports each attack's accuracy and the per-image worst case.
``--attack autoattack`` then also runs AutoAttack's standard version (APGD-CE, APGD-T, FAB-T,
Square; ``training/autoattack.py``, the ``autoattack`` extra) on the same images and reports its
accuracy, the accuracy after each of its attacks and its time: AutoAttack is the field's
reference evaluation, and an accuracy below PGD's says PGD alone overestimated robustness.
It uses torchattacks' attacks with the reference's settings, chosen over the
adversarial-robustness-toolbox, which has no FAB: docs/training.md "AutoAttack".
Prints a summary; ``--json PATH`` also writes the result as JSON (``--json -``: to stdout,
the summary then to stderr). Exit codes: 0 done, 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from avc_common.artifact import MANIFEST_FILE, ArtifactError, load_artifact
from avc_common.cli import (
    HelpFormatter,
    add_data,
    add_device,
    add_json,
    add_progress,
    add_threads,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    program,
    set_threads,
    text_stream,
    write_json,
)
from avc_common.data.tiny_imagenet import DatasetLayoutError
from training import autoattack
from training.checkpoint import CheckpointError, load_checkpoint, load_weights
from training.data import DATASETS, load_dataset
from training.engine import Runtime, evaluate_accuracy
from training.models import MODELS, create_model
from training.pgd import ATTACK_LOSSES, NORMS

ATTACKS = ("pgd", "autoattack")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=program("python training/evaluate.py"), description=__doc__.split("\n")[0],
                                epilog="Exit codes: 0 done, 2 bad input.", formatter_class=HelpFormatter)
    p.add_argument("--model", type=Path, required=True, metavar="PATH",
                   help="artifact folder (model.pt2 + manifest.json) or checkpoint.pt from train_tiny.py")
    add_data(p, "data folder (default: for a checkpoint, the folder it was trained on; for an artifact, "
                "the data set's usual place)")
    p.add_argument("--images", metavar="N", type=non_negative_int, default=0,
                   help="evaluate the first N test images (0 = all)")
    p.add_argument("--norm", choices=NORMS, default="linf", help="threat model")
    p.add_argument("--epsilon", type=non_negative_float, default=None,
                   help="radius (default: the training epsilon recorded with the model)")
    p.add_argument("--step-size", type=positive_float, default=None, help="PGD step size (default: epsilon / 10)")
    p.add_argument("--steps", metavar="K", type=positive_int, default=20, help="PGD steps")
    p.add_argument("--restarts", metavar="N", type=positive_int, default=1, help="random restarts per attack")
    p.add_argument("--losses", nargs="+", choices=sorted(ATTACK_LOSSES), default=["ce", "cw"],
                   help="attack losses; the worst case over them is reported too")
    p.add_argument("--attack", choices=ATTACKS, default="pgd",
                   help="pgd: PGD-K with each of --losses; autoattack: that, then AutoAttack's standard version "
                        "(APGD-CE, APGD-T, FAB-T, Square) on the same images, with the accuracy after each "
                        f"(needs the {autoattack.EXTRA} extra; minutes per 100 images on a CPU)")
    p.add_argument("--batch-size", metavar="N", type=positive_int, default=500, help="images per batch")
    add_device(p)
    add_threads(p, why="; 1 on a CPU that other jobs share, where a second thread mostly waits for its turn")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the random starts")
    add_json(p, "the JSON result")
    add_progress(p)
    return p


def load_model(path: Path, device: torch.device, data_dir: Path | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The model and its description (dataset, arch, training settings, ``data``: the folder to read its data
    set from) from an artifact or checkpoint.

    A checkpoint records the folder it was trained on; ``data_dir`` overrides it (the data moved), and the
    model's classes, channels and normalisation come from the data set read there.
    """
    if path.is_dir() or path.name == MANIFEST_FILE:
        artifact = load_artifact(path if path.is_dir() else path.parent, device)
        m = artifact.manifest
        return artifact.model, {"dataset": m["dataset"], "arch": m["arch"], "training": m["training"],
                                "data": data_dir}
    ckpt = load_checkpoint(path, {"model": dict, "args": dict})
    args = ckpt["args"]
    for key, known in (("dataset", DATASETS), ("arch", MODELS)):
        if not isinstance(args.get(key), str) or args[key] not in known:
            raise CheckpointError(f"{path} records {key} {args.get(key)!r}, expected one of {sorted(known)}")
    data_dir = data_dir if data_dir is not None else args.get("data")
    data = load_dataset(args["dataset"], data_dir)
    kwargs = {} if args.get("drop_rate") is None else {"drop_rate": args["drop_rate"]}
    net = create_model(args["arch"], data.num_classes, data.input_shape[2], data.mean, data.std, **kwargs)
    load_weights(net, ckpt["model"], path, f"the {args['arch']} model for {args['dataset']}")
    return net.to(device), {"dataset": args["dataset"], "arch": args["arch"], "training": args, "data": data_dir}


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    device = args.device
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    model, info = load_model(args.model, device, args.data)
    data = load_dataset(info["dataset"], info["data"])
    images, labels = torch.from_numpy(data.test_images), torch.from_numpy(data.test_labels)
    if args.images:
        images, labels = images[:args.images], labels[:args.images]
    eps = args.epsilon if args.epsilon is not None else info["training"].get("epsilon", 0.031)
    step = args.step_size if args.step_size is not None else eps / 10
    # built before any attack runs: a recorded training epsilon of 0 is refused here, not after PGD
    cfg = autoattack.AutoAttackConfig(args.norm, eps, seed=args.seed) if args.attack == "autoattack" else None
    rt = Runtime(device)
    start = time.perf_counter()
    metrics = evaluate_accuracy(model, images, labels, rt, args.batch_size, eps, step,
                                args.steps, args.norm, tuple(args.losses), args.restarts,
                                progress=args.progress)
    attack = {"norm": args.norm, "epsilon": eps, "step_size": step, "steps": args.steps,
              "restarts": args.restarts, "losses": args.losses}
    if cfg is not None:
        metrics.update(autoattack.autoattack_accuracy(model, images, labels, rt, args.batch_size, cfg,
                                                      data.num_classes, progress=args.progress))
        attack["autoattack"] = autoattack.config_record(cfg)
    return {"model": str(args.model), "dataset": info["dataset"], "arch": info["arch"],
            "images": len(images), "attack": attack, **metrics, "seconds": round(time.perf_counter() - start, 2)}


def main(argv: Sequence[str] | None = None) -> int:
    """``python training/evaluate.py`` / ``avc-evaluate``: print (and ``--json``) the result; the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.attack == "autoattack":
        if not autoattack.available():
            parser.error(f"--attack autoattack: {autoattack.MISSING}")
        if args.epsilon == 0:
            parser.error("--epsilon: AutoAttack needs a radius > 0")
    if not args.model.exists():
        print(f"error: --model {args.model}: not found (expected an artifact folder or a checkpoint.pt "
              f"written by train_tiny.py)", file=sys.stderr)
        return 2
    try:
        result = evaluate(args)
    except CheckpointError as err:
        print(f"error: --model {err}", file=sys.stderr)
        return 2
    except (ArtifactError, DatasetLayoutError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except autoattack.ConfigError as err:
        print(f"error: {err} (the training epsilon the model records; give --epsilon)", file=sys.stderr)
        return 2
    write_json(args.json, json.dumps(result, indent=2) + "\n")
    out, a = text_stream(args.json), result["attack"]
    print(f"{result['arch']} on {result['dataset']}, {result['images']} test images", file=out)
    print(f"clean accuracy        {result['clean_accuracy']:.4f}", file=out)
    for name in a["losses"]:
        key = f"pgd_accuracy_{name}" if len(a["losses"]) > 1 else "pgd_accuracy"
        if key in result:
            print(f"PGD-{a['steps']} {name:<3} accuracy {result[key]:.4f}", file=out)
    if "pgd_accuracy" in result:
        print(f"worst case accuracy   {result['pgd_accuracy']:.4f}  ({a['norm']} eps={a['epsilon']:g} "
              f"step={a['step_size']:g}, {a['restarts']} restart(s))", file=out)
    if "autoattack_accuracy" in result:
        print(f"AutoAttack ({a['autoattack']['version']}, {a['norm']} eps={a['epsilon']:g}), the accuracy after each "
              f"attack in turn:", file=out)
        for name in a["autoattack"]["components"]:
            print(f"  after {name:<7} {result[autoattack.metric_key(name)]:.4f}", file=out)
        print(f"AutoAttack accuracy   {result['autoattack_accuracy']:.4f}  ({result['autoattack_seconds']:.1f}s)",
              file=out)
    print(f"{result['seconds']:.1f}s" + (f"; JSON: {args.json}" if args.json else ""), file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
