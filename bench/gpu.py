"""The one prepared GPU run: every figure a session with a lent GPU is asked for, in one script of about 8 minutes.

Stages, each under its own time limit (``--STAGE-timeout-s``); a stage that fails or runs out of time is
reported and the next one still runs:

1. ``train-step`` and ``train-step-compile``: bench/train_step.py's TRADES step on ResNet-18 at 64x64 (batch
   128, K=10): the reference style, ours in fp32, ours in bf16 + channels_last; then, in a run of its own
   (compiling may take minutes), ours in bf16 + channels_last + torch.compile (CUDA only);
2. ``train``: a short TRADES run, 300 steps, through ``training/train_tiny.py --device cuda`` on synthetic
   64x64x3 data with 200 classes (bench/fixtures.py), ending in an exported artifact;
3. ``score``: that artifact served by ``python -m defense serve --device cuda`` and scored by
   ``attacks/score.py --preset top5`` (50 images, 1000 queries per attack and image, the artifact itself as
   the surrogate, ``--device cuda``), measured as bench/real_shape.py measures it: end-to-end images/s (the
   images the server answered / the scorer's wall time) and the projected time for 500 images. The images
   are labelled with the model's own answers, so every one is attacked: the projection is the worst case.
   If the train stage left no artifact, an untrained ResNet-18 is scored instead (and the figures say so).

    PYTHONPATH=. python bench/gpu.py --output $OUT                              # the device machine, repo root
    PYTHONPATH=. python bench/gpu.py --device cpu --tiny --output /tmp/gpu-bench  # every stage in seconds

``--tiny``: a small CNN's train step, 2 training steps on 4 images, and the scorer's hsja and geoda (which
need no surrogate) on one image with 8 queries each, at server batch 4.

The device machine has torch (2.11), timm, grpcio, numpy, tqdm, matplotlib and pyyaml, but not this project
and no package registry. Before any stage the script imports what each stage needs, and names the wheels to
carry for whatever is missing; a stage that cannot import is reported as missing, the others run. What the
stages import: numpy, torch, timm, tqdm, matplotlib, pyyaml, pillow, grpcio>=1.85.1 and protobuf>=7.35.1
(the versions the stubs in avc_common/rpc/ were generated with), grpcio-health-checking, grpcio-reflection.

Writes to ``--output``: gpu-bench.json (every stage's status, seconds and figures; rewritten after each
stage, so a run cut short keeps what it finished), gpu-bench.log (everything printed) and each stage's own
log and results. Data, checkpoints and artifacts stay in a temporary folder (``--work`` keeps them).
Ends with one ``name: value`` line per figure. Exit codes: 0 every stage done (or skipped: not for this
device), 1 a stage failed, ran out of time or could not import, 2 bad arguments.

It uses the other bench scripts (bench/real_shape.py's command runner and end-to-end measurement,
bench/fixtures.py's data), so it runs with the repository root on the import path: ``PYTHONPATH=.``, which
the device machine needs anyway. At module level it imports only the standard library and
``avc_common``'s standard-library modules, so that the checks run even where a wheel is missing.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avc_common.atomic import atomic_write_text
from avc_common.cli import HelpFormatter, add_device, positive_float

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parent.parent
# Import name -> the wheel that provides it: what the device machine may lack.
WHEELS = {"numpy": "numpy", "torch": "torch", "timm": "timm", "tqdm": "tqdm", "matplotlib": "matplotlib",
          "yaml": "pyyaml", "PIL": "pillow", "grpc": "grpcio>=1.85.1", "google.protobuf": "protobuf>=7.35.1",
          "grpc_health": "grpcio-health-checking", "grpc_reflection": "grpcio-reflection"}
# What each stage imports, here or in the commands it runs: importing these imports all of it.
NEEDS = {"train-step": ("bench.real_shape", "bench.train_step"),
         "train": ("bench.real_shape", "bench.fixtures", "training.train_tiny"),
         "score": ("bench.real_shape", "bench.server", "defense.serve", "attacks.scoring.cli")}
PROJECT = ("avc_common", "defense", "training", "attacks", "bench")  # on the path only with PYTHONPATH=.
PROJECTED_IMAGES = 500


# --- what the machine has --------------------------------------------------------------------

def missing_wheels() -> list[str]:
    """The wheels of :data:`WHEELS` whose modules this interpreter cannot find."""
    missing = []
    for module, wheel in WHEELS.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # its parent package is missing (google for google.protobuf)
            found = False
        if not found:
            missing.append(wheel)
    return missing


def stage_problems() -> dict[str, str]:
    """Per stage that cannot run here, why: the wheel to carry, or the import's own error (an old grpcio, say)."""
    problems = {}
    for stage, modules in NEEDS.items():
        for module in modules:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as err:
                top = (err.name or "").split(".")[0]
                wheel = next((w for m, w in WHEELS.items() if top == m.split(".")[0]), f"that provides {top}")
                problems[stage] = (f"cannot import {err.name}: run from the repository root with PYTHONPATH=."
                                   if top in PROJECT else f"cannot import {err.name}: carry the wheel {wheel}")
                break
            except Exception as err:  # the stubs refuse a grpcio or protobuf older than their generator's
                problems[stage] = f"importing {module}: {type(err).__name__}: {err}"
                break
    return problems


# --- the stages --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """How much work each stage does: ``FULL`` on the GPU (about 8 minutes), ``TINY`` for seconds on a CPU."""

    step_flags: tuple[str, ...]  # bench/train_step.py
    classes: int  # the fixture: classes, and training and val images of each
    per_class: int
    val_per_class: int
    epochs: int  # training/train_tiny.py (TRADES)
    batch_size: int
    train_images: int  # 0 = all
    inner_steps: int  # K
    final_eval_images: int
    eval_steps: int
    suite: tuple[str, ...]  # attacks/score.py: the attacks, and whether the trained artifact is their surrogate
    surrogate: bool
    images: int
    budget: int  # queries per attack and image
    max_batch_size: int  # the server's --max-batch-size; 0 = its default


FULL = Settings(step_flags=("--arch", "resnet18", "--batch-size", "128", "--steps", "10", "--fast"),
                classes=200, per_class=64, val_per_class=3,  # 12,800 images, batch 128, 3 epochs: 300 steps
                epochs=3, batch_size=128, train_images=0, inner_steps=10, final_eval_images=500, eval_steps=20,
                suite=("--preset", "top5"), surrogate=True, images=50, budget=1000, max_batch_size=0)
# The transfer attacks' surrogate gradients alone take minutes on a CPU: --tiny scores with two attacks that need none.
TINY = Settings(step_flags=("--arch", "small_cnn", "--batch-size", "8", "--steps", "2", "--rounds", "1", "--iters", "1",
                            "--fast"),
                classes=200, per_class=1, val_per_class=1,
                epochs=1, batch_size=2, train_images=4, inner_steps=1, final_eval_images=2, eval_steps=1,
                suite=("--attacks", "hsja,geoda"), surrogate=False, images=1, budget=8, max_batch_size=4)


def train_step_stage(s: Settings, args: argparse.Namespace, work: Path, say: Callable[[str], None], *,
                     compiled: bool = False) -> dict:
    """bench/train_step.py in its own process: images/s per kind of step, the speed-up, whether the losses agree.

    Two runs, two stages: without torch.compile (reference, ours, ours + bf16 + channels_last; seconds), then
    with it (``compiled``; compiling takes minutes), so that a compile that runs out of time costs only its
    own figure.
    """
    from bench.real_shape import log_tail, run_command

    name = "train-step-compile" if compiled else "train-step"
    report, log = args.output / f"{name}.json", args.output / f"{name}.log"
    # exit 1: the reference and our loss differ on the same batch (the figures are written all the same)
    code = run_command(["bench/train_step.py", *s.step_flags, "--compile" if compiled else "--no-compile",
                        "--device", str(args.device), "--json", str(report)], log, args.timeouts[name], ok=(0, 1))
    say(log_tail(log, 12))
    rate = json.loads(report.read_text())["images_per_s"]
    if compiled:
        return {f"train-step {kind}{figure}": value for kind, r in rate.items() if kind.endswith("+compile")
                for figure, value in ((" images/s", r), ("/reference ratio", r / rate["reference"]))}
    figures = {f"train-step {kind} images/s": r for kind, r in rate.items()}
    figures.update({f"train-step {kind}/reference ratio": r / rate["reference"] for kind, r in rate.items()
                    if kind not in ("reference", "ours")})
    figures["train-step speed-up ratio"] = rate["ours"] / rate["reference"]
    figures["train-step same loss"] = float(code == 0)
    return figures


def train_stage(s: Settings, args: argparse.Namespace, work: Path, say: Callable[[str], None]) -> dict:
    """The synthetic Tiny ImageNet written, then a short TRADES run exported to ``work/train/artifact``."""
    from bench.fixtures import write_tiny_imagenet
    from bench.real_shape import log_tail, run_command

    start = time.perf_counter()
    data = write_tiny_imagenet(work / "tiny-imagenet", s.classes, s.per_class, s.val_per_class)
    written = time.perf_counter() - start
    say(f"  fixture: {s.classes} classes x {s.per_class} training images in {written:.1f} s")
    out = work / "train"
    run_command(["training/train_tiny.py", "--dataset", "tiny_imagenet", "--data", str(data), "--arch", "resnet18",
                 "--loss", "trades", "--steps", str(s.inner_steps), "--epochs", str(s.epochs),
                 "--batch-size", str(s.batch_size), "--train-images", str(s.train_images), "--eval-images", "0",
                 "--final-eval-images", str(s.final_eval_images), "--eval-steps", str(s.eval_steps),
                 "--eval-batch-size", str(min(s.final_eval_images, 500)), "--device", str(args.device),
                 "--output", str(out), "--no-progress"], args.output / "train.log", args.timeouts["train"])
    say(log_tail(args.output / "train.log", 8))
    shutil.copy(out / "summary.json", args.output / "train-summary.json")
    summary = json.loads((out / "summary.json").read_text())
    images = s.train_images or s.classes * s.per_class
    final = summary.get("final", {})
    return {"train fixture s": written, "train steps": s.epochs * math.ceil(images / s.batch_size),
            "train seconds": sum(h["train_seconds"] for h in summary["history"]),
            "train images/s": summary["history"][-1]["train_images_per_s"],
            "train clean accuracy": final.get("clean_accuracy", float("nan")),
            "train pgd accuracy": final.get("pgd_accuracy", float("nan"))}


def score_stage(s: Settings, args: argparse.Namespace, work: Path, say: Callable[[str], None]) -> dict:
    """The trained artifact (or an untrained one) served and scored with the top-5 suite; its end-to-end figures."""
    from avc_common.artifact import load_artifact
    from avc_common.data.tiny_imagenet import load_tiny_imagenet
    from bench.real_shape import DEFAULTS, end_to_end, eval_folder, log_tail
    from bench.server import build_artifact, random_images

    start = time.monotonic()
    artifact = work / "train" / "artifact"
    trained = (artifact / "manifest.json").exists()
    if not trained:
        say("  no trained artifact (the train stage failed): scoring an untrained ResNet-18")
        artifact = build_artifact("resnet18", work / "untrained")
    data = work / "tiny-imagenet"
    if (data / "val" / "val_annotations.txt").exists():
        images = load_tiny_imagenet(data, "val", progress=False).images[:s.images]
    else:
        images = random_images((64, 64, 3), s.images, seed=0)
    labels = eval_folder(load_artifact(artifact, args.device).model, images, work / "eval", args.device)
    suite = [*s.suite, *(("--surrogate", str(artifact)) if s.surrogate else ())]
    say(f"  {len(images)} images, labelled with the model's answers ({len(set(labels.tolist()))} classes); "
        f"{' '.join(suite)}, {s.budget} queries per attack and image")
    left = args.timeouts["score"] - (time.monotonic() - start)
    run = end_to_end(artifact, work / "eval", [
        *suite, "--images", str(s.images), "--budget", str(s.budget), "--device", str(args.device), "--seed", "0"],
        work / "score", left, threads=0,
        max_batch_size=s.max_batch_size or DEFAULTS.max_batch_size, device=str(args.device))
    shutil.copy(work / "score" / "score.log", args.output / "score.log")
    say(log_tail(args.output / "score.log", 14))
    if run.results:
        atomic_write_text(args.output / "score-results.json", json.dumps(run.results, indent=1) + "\n")
    figures = {"score trained": float(trained), "score complete": float(run.complete),
               "score queries": run.queries, "score wall s": run.wall_s, "score end-to-end images/s": run.images_per_s}
    if run.complete:
        summary = run.results["summary"]
        figures.update({f"score {name} wall s": a["wall_time_s"] for name, a in summary["attacks"].items()})
        figures["score median l2"] = summary["median"]
        figures[f"score projected {PROJECTED_IMAGES} images minutes"] = run.wall_s / s.images * PROJECTED_IMAGES / 60
    else:
        say(f"  {run.error}")
        figures["score queries per s so far"] = run.images_per_s
    return figures


STAGES: dict[str, Callable[..., dict]] = {"train-step": train_step_stage,
                                          "train-step-compile": partial(train_step_stage, compiled=True),
                                          "train": train_stage, "score": score_stage}
# Seconds each stage may take: about 8 minutes in all with the fixture and the checks (FULL on an H200).
TIMEOUTS = {"train-step": 60, "train-step-compile": 130, "train": 100, "score": 180}
CUDA_ONLY = {"train-step-compile": "torch.compile is timed on CUDA only (compiling for the CPU takes minutes)"}


def run_stage(name: str, problems: dict[str, str], s: Settings, args: argparse.Namespace, work: Path,
                say: Callable[[str], None]) -> dict[str, Any]:
    """One stage's entry of the report: its status, error, seconds and figures. The status is ok, skipped (not
    for this device), missing (an import failed: ``problems``), failed or timeout.

    Any failure is caught here, so that the next stage still runs.
    """
    start = time.monotonic()
    entry: dict[str, Any] = {"status": "ok", "error": None, "figures": {}}
    if name in CUDA_ONLY and args.device.type != "cuda":
        entry.update(status="skipped", error=CUDA_ONLY[name])
    elif name in problems:
        entry.update(status="missing", error=problems[name])
    else:
        try:
            entry["figures"] = STAGES[name](s, args, work, say)
        except Exception as err:
            if hasattr(err, "timed_out"):  # bench.real_shape.CommandFailed: its message ends with the log's tail
                entry.update(status="timeout" if err.timed_out else "failed", error=str(err))
            else:
                entry.update(status="failed", error=f"{type(err).__name__}: {err}\n{traceback.format_exc()}")
    entry["seconds"] = time.monotonic() - start
    return entry


# --- main ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--output", type=Path, metavar="DIR", default=Path("runs/gpu-bench"),
                   help="gpu-bench.json, gpu-bench.log and each stage's log and results go here")
    p.add_argument("--work", type=Path, metavar="DIR", default=None,
                   help="keep the data, checkpoints and artifacts here (default: a temporary folder, removed)")
    add_device(p, default="cuda", what="the training, the server and the scorer's surrogates")
    p.add_argument("--tiny", action="store_true", help="tiny models, steps and images: every stage in seconds")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated stages, from: {', '.join(STAGES)}")
    for name, seconds in TIMEOUTS.items():
        p.add_argument(f"--{name}-timeout-s", metavar="S", type=positive_float, default=float(seconds),
                       help=f"time limit of the {name} stage's command" + (
                           "s (the server's start and the scorer's run)" if name == "score" else ""))
    args = p.parse_args(argv)
    args.timeouts = {name: getattr(args, f"{name.replace('-', '_')}_timeout_s") for name in TIMEOUTS}
    stages = [n.strip() for n in args.stages.split(",") if n.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown or not stages:
        p.error(f"--stages: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(STAGES)}")
    args.output.mkdir(parents=True, exist_ok=True)
    log_path = args.output / "gpu-bench.log"
    log_path.write_text("")

    def say(message: str) -> None:
        print(message, flush=True)
        with open(log_path, "a") as f:
            f.write(message + "\n")

    settings = TINY if args.tiny else FULL
    report: dict[str, Any] = {"command": shlex.join(["python", "bench/gpu.py", *(sys.argv[1:] if argv is None
                                                                                   else argv)]),
                              "device": str(args.device), "tiny": args.tiny, "machine": machine(args.device),
                              "missing_wheels": missing_wheels(), "stages": {}, "figures": {}}
    say(f"machine: {report['machine']}")
    if report["missing_wheels"]:
        say(f"missing: carry these wheels (pip download them where a registry is, then pip install --no-index "
            f"--find-links DIR): {' '.join(report['missing_wheels'])}")
    problems = stage_problems()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        work = args.work or Path(tmp)
        for name in stages:
            say(f"\n[{name}]")
            entry = run_stage(name, problems, settings, args, work, say)
            report["stages"][name] = entry
            report["figures"].update(entry["figures"])
            say(f"[{name}] {entry['status']} in {entry['seconds']:.0f} s" + (f": {entry['error']}" if entry["error"]
                                                                            else ""))
            atomic_write_text(args.output / "gpu-bench.json", json.dumps(report, indent=2) + "\n")
    report["seconds"] = time.monotonic() - started
    atomic_write_text(args.output / "gpu-bench.json", json.dumps(report, indent=2) + "\n")
    outcome = ", ".join(f"{n} {e['status']}" for n, e in report["stages"].items())
    say(f"\nstages: {outcome}; "
        f"{report['seconds']:.0f} s in all; results in {args.output}")
    for name, value in report["figures"].items():
        say(f"{name}: {value:.2f}" if abs(value) < 1e5 else f"{name}: {value:.0f}")
    return 0 if all(e["status"] in ("ok", "skipped") for e in report["stages"].values()) else 1


def machine(device: torch.device) -> str:
    """The device, the CPU's cores and the torch version, in words."""
    import torch

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return f"{where}, {os.cpu_count()} CPU cores, torch {torch.__version__}, Python {sys.version.split()[0]}"


if __name__ == "__main__":
    sys.exit(main())
