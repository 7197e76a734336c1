"""The accuracy/robustness trade-off of TRADES over 1/lambda (= beta) on Fashion-MNIST.

    python training/sweep.py                                  # beta 1..5, the CPU recipe, 2 epochs each
    python training/sweep.py --betas 1 3 5 --epochs 4 --lr 0.03   # unknown flags go to train_tiny.py

Each beta is one ``training/train_tiny.py --recipe fmnist-cpu --loss trades --beta B`` run
(called in-process, so the training loop is the one in ``training/``) in ``OUTPUT/beta-B/``.
A run whose exact command already finished there is reused; an interrupted one resumes
from its checkpoint. Every run uses the same seed, so the betas share initial weights,
data order and evaluation images and differ only in the TRADES weight.

Writes ``OUTPUT/tradeoff.json``, ``OUTPUT/tradeoff.md`` (beta, clean and PGD-20 accuracy
with their binomial standard errors, wall time) and ``OUTPUT/tradeoff.png`` (clean and
robust accuracy against 1/lambda). Exit codes: 0 done, 2 bad arguments or data, 1 a run failed.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from avc_common.atomic import atomic_open, atomic_write_text
from avc_common.cli import (
    HelpFormatter,
    add_data,
    add_output,
    non_negative_float,
    non_negative_int,
    positive_int,
    program,
)
from training import train_tiny

RUN_RECORD = "sweep-run.json"
# train_tiny.py flags the sweep sets itself for every run (--output is the sweep's own); passing them through
# would be ambiguous.
OWNED_FLAGS = ("--beta", "--loss", "--output-dir", "--resume", "--final-eval-images", "--recipe")


class RunFailed(RuntimeError):
    """A training run exited non-zero (train_tiny.py has printed why)."""

    def __init__(self, beta: float, code: int) -> None:
        super().__init__(f"the run for beta {beta:g} failed (train_tiny.py exit {code})")
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=program("python training/sweep.py"), description=__doc__.split("\n")[0],
                                allow_abbrev=False, formatter_class=HelpFormatter,
                                epilog="Any other flag is passed to every train_tiny.py run "
                                       "(see `python training/train_tiny.py --help`), e.g. --threads 1 (best while "
                                       "other jobs hold the cores) or --lr 0.03. Exit codes: 0 done, 2 bad arguments "
                                       "or data, 1 a run failed.")
    p.add_argument("--betas", type=non_negative_float, nargs="+", default=[1.0, 2.0, 3.0, 4.0, 5.0],
                   help="distinct TRADES beta = 1/lambda values, one training run each")
    p.add_argument("--epochs", metavar="N", type=positive_int, default=2, help="training epochs of every run")
    p.add_argument("--train-images", metavar="N", type=non_negative_int, default=0,
                   help="train on the first N training images (0 = all)")
    p.add_argument("--eval-images", metavar="N", type=non_negative_int, default=2000,
                   help="test images (the same random subset for every beta) for clean and PGD-20 accuracy; 0 = all")
    add_data(p, "Fashion-MNIST IDX folder (default: train_tiny.py's, /usr/share/datasets/fashion-mnist)")
    add_output(p, Path("runs/sweep"), "one beta-B/ folder per run and tradeoff.json/.md/.png")
    return p


def run_argv(beta: float, args: argparse.Namespace, extra: list[str]) -> list[str]:
    """The train_tiny.py command line of one beta's run."""
    argv = ["--recipe", "fmnist-cpu", *extra, "--loss", "trades", "--beta", f"{beta:g}",
            "--epochs", str(args.epochs), "--train-images", str(args.train_images), "--eval-images", "0",
            "--final-eval-images", str(args.eval_images), "--output", str(run_dir(args.output, beta)),
            "--resume", "--no-export"]
    return argv + (["--data", str(args.data)] if args.data else [])


def run_dir(output: Path, beta: float) -> Path:
    return output / f"beta-{beta:g}"


def train_or_reuse(beta: float, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    """One beta's row: reuse a finished run of the same command, else train (resuming a checkpoint)."""
    argv = run_argv(beta, args, extra)
    out = run_dir(args.output, beta)
    record_path, summary_path = out / RUN_RECORD, out / train_tiny.SUMMARY
    record = json.loads(record_path.read_text()) if record_path.is_file() else None
    reused = bool(record and record["argv"] == argv and summary_path.is_file())
    if reused:
        print(f"[beta {beta:g}] reusing {out}", flush=True)
    else:
        print(f"[beta {beta:g}] $ python training/train_tiny.py {' '.join(argv)}", flush=True)
        start = time.monotonic()
        code = train_tiny.main(argv)
        if code:
            raise RunFailed(beta, code)
        record = {"argv": argv, "wall_seconds": time.monotonic() - start}
        atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
    summary = json.loads(summary_path.read_text())
    final = summary["final"]
    return {"beta": beta, "inv_lambda": beta, "clean_accuracy": final["clean_accuracy"],
            "pgd_accuracy": final["pgd_accuracy"], "eval_images": final["eval_images"],
            "eval_attack": final["eval_attack"], "epochs": summary["epochs"],
            "train_seconds": sum(h["train_seconds"] for h in summary["history"]),
            "wall_seconds": record["wall_seconds"], "reused": reused, "output_dir": str(out)}


def standard_error(accuracy: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on ``n`` images."""
    return math.sqrt(accuracy * (1 - accuracy) / max(n, 1))


def trend(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether clean accuracy falls and robust accuracy rises as 1/lambda grows (rows sorted by beta)."""
    clean = [r["clean_accuracy"] for r in rows]
    robust = [r["pgd_accuracy"] for r in rows]
    return {"clean_falls_monotonically": all(a >= b for a, b in itertools.pairwise(clean)),
            "robust_rises_monotonically": all(a <= b for a, b in itertools.pairwise(robust)),
            "clean_change": clean[-1] - clean[0], "robust_change": robust[-1] - robust[0]}


def table(rows: list[dict[str, Any]]) -> str:
    """The trade-off table in Markdown (accuracies with +- one binomial standard error)."""
    lines = ["| 1/lambda (beta) | clean acc | PGD-20 acc | wall time | train time | epochs | eval images |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        n = r["eval_images"]
        lines.append(f"| {r['beta']:g} | {r['clean_accuracy']:.2%} ± {standard_error(r['clean_accuracy'], n):.2%} "
                     f"| {r['pgd_accuracy']:.2%} ± {standard_error(r['pgd_accuracy'], n):.2%} "
                     f"| {r['wall_seconds'] / 60:.1f} min | {r['train_seconds'] / 60:.1f} min | {r['epochs']} | {n} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Clean and PGD-20 accuracy against 1/lambda, with +- one standard error bars."""
    x = [r["beta"] for r in rows]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for key, label in (("clean_accuracy", "clean"), ("pgd_accuracy", "PGD-20 (robust)")):
        y = [r[key] for r in rows]
        ax.errorbar(x, y, yerr=[standard_error(v, r["eval_images"]) for v, r in zip(y, rows)],
                    marker="o", capsize=3, label=label)
    ax.set_xlabel("1/lambda (TRADES beta)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"TRADES trade-off on Fashion-MNIST ({rows[0]['eval_attack']})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)


def parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The sweep's own flags and the ones passed to train_tiny.py (checked against its parser)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    owned = [flag for flag in extra if flag.split("=")[0] in OWNED_FLAGS]
    if owned:
        parser.error(f"{', '.join(owned)}: set by the sweep for every run (use --betas, --output, --eval-images)")
    if len(set(args.betas)) != len(args.betas):
        parser.error("--betas: expected distinct numbers")
    if args.data is not None and not args.data.is_dir():
        parser.error(f"--data {args.data}: expected a folder with the Fashion-MNIST IDX files")
    train_tiny.parse_args(run_argv(args.betas[0], args, extra))  # an unknown flag exits 2 here, before any training
    return args, extra


def main(argv: Sequence[str] | None = None) -> int:
    """``python training/sweep.py``: train (or reuse) every beta's run, write the table; the exit status."""
    args, extra = parse(argv)
    start = time.monotonic()
    try:
        rows = [train_or_reuse(beta, args, extra) for beta in sorted(args.betas)]
    except RunFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if err.code == 2 else 1
    text = table(rows)
    result = {"rows": rows, "trend": trend(rows), "wall_seconds": time.monotonic() - start,
              "command": " ".join(["python", "training/sweep.py", *(sys.argv[1:] if argv is None else argv)])}
    atomic_write_text(args.output / "tradeoff.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.output / "tradeoff.md", f"# TRADES trade-off over 1/lambda (Fashion-MNIST)\n\n{text}\n\n"
                                                   f"Command: `{result['command']}`\n")
    plot(rows, args.output / "tradeoff.png")
    t = result["trend"]
    print(f"\n{text}\n")
    print(f"clean accuracy {'falls monotonically' if t['clean_falls_monotonically'] else 'does not fall monotonically'}"
          f" ({t['clean_change']:+.2%} from beta {rows[0]['beta']:g} to {rows[-1]['beta']:g}); robust accuracy "
          f"{'rises monotonically' if t['robust_rises_monotonically'] else 'does not rise monotonically'}"
          f" ({t['robust_change']:+.2%})")
    print(f"results: {args.output / 'tradeoff.md'}  {args.output / 'tradeoff.json'}  {args.output / 'tradeoff.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
