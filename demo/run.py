"""The main job end to end on Fashion-MNIST: train, export, serve label-only, attack, compare.

    python demo/run.py            # the full demo (sized for 20 minutes on 2 CPU cores)
    python demo/run.py --quick    # a smoke run of every stage on small settings

Four models are trained with ``training/train_tiny.py --recipe fmnist-cpu``: a natural
one, a TRADES one (beta 6) and two surrogates that only the attacks see, one PGD-AT and
one natural (other seeds), as the NeurIPS 2018 AVC's winning attackers mixed theirs.
The natural and TRADES artifacts are each served by the real server command
(``python -m defense serve``, as the container runs it) and scored through gRPC by
``attacks/score.py`` with the top-5 suite. Every stage is a user-facing command; the
demo prints each one, keeps its output under ``--output`` and reuses it when rerun
(a finished stage is skipped, an interrupted one resumes).

Writes ``OUTPUT/results.json``, ``OUTPUT/results.md`` and ``OUTPUT/cdf.png`` (the
minimal-L2 distribution of both models on one figure). One progress bar spans the stages:
which stage, how far it is (epochs of a training run, images of a score, read from the files the
stage writes), the time so far and an estimate of what is left (from this folder's earlier stage
times where it has them, else from the measured times in ``EXPECTED_S``); each stage's key figure
is printed as it finishes, and the end says where to look next. Exit codes: 0 done, 1 a stage
failed (its command and log tail are printed), 2 bad arguments.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from tqdm import tqdm

from avc_common import __version__
from avc_common.atomic import atomic_open, atomic_write_text
from avc_common.cli import add_progress
from defense.process import ServerProcess, free_port, wait_serving

ROOT = Path(__file__).resolve().parent.parent

SCORED = ("natural", "trades")
SURROGATES = ("surrogate-pgd", "surrogate-natural")
TIMINGS = "stage_seconds.json"
POLL_S = 1.0  # how often a running stage's progress is read from its files


@dataclass(frozen=True)
class Settings:
    """How much work each stage does; ``FULL`` is the demo, ``QUICK`` the smoke run."""

    epochs: dict[str, int]
    train_images: int
    eval_images: int
    final_eval_images: int
    score_images: int
    budget: int


FULL = Settings(epochs={"natural": 3, "trades": 4, "surrogate-pgd": 2, "surrogate-natural": 2}, train_images=0,
                eval_images=500, final_eval_images=2000, score_images=100, budget=1000)
QUICK = Settings(epochs={"natural": 1, "trades": 1, "surrogate-pgd": 1, "surrogate-natural": 1}, train_images=20000,
                 eval_images=200, final_eval_images=500, score_images=16, budget=200)
# Stage seconds measured on 2 CPU cores (docs/benchmarks.md "Demo"): the first estimate of what is left
EXPECTED_S = {"full": {"train natural": 90, "train trades": 385, "train surrogate-pgd": 196,
                       "train surrogate-natural": 71, "score natural": 199, "score trades": 179},
              "quick": {"train natural": 17, "train trades": 44, "train surrogate-pgd": 41,
                        "train surrogate-natural": 16, "score natural": 13, "score trades": 12}}
LOSS_FLAGS = {"natural": ["--loss", "natural"], "trades": ["--loss", "trades", "--beta", "6"],
              "surrogate-pgd": ["--loss", "pgd_at", "--seed", "1"],
              "surrogate-natural": ["--loss", "natural", "--seed", "1"]}


class StageFailed(RuntimeError):
    """A stage's command exited non-zero; the message holds the command and its log tail."""


class Progress:
    """One bar over every stage, in expected seconds: a stage moves it up to its estimate while it runs (never
    past it: an estimate is not a promise) and to its end when it finishes. ``say`` prints above the bar."""

    def __init__(self, stages: dict[str, float], enabled: bool) -> None:
        self.stages = stages
        self.done_s = 0.0
        self.bar = tqdm(total=round(sum(stages.values())), unit="s", disable=not enabled, dynamic_ncols=True,
                        bar_format="{desc} |{bar}| {elapsed} elapsed, about {remaining} left")
        self.enabled = enabled

    def say(self, text: str) -> None:
        if self.enabled:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def running(self, name: str, seconds: float, detail: str) -> None:
        index = list(self.stages).index(name) + 1
        self.bar.set_description_str(f"[{index}/{len(self.stages)}] {name}{': ' + detail if detail else ''}")
        self._move(self.done_s + min(seconds, 0.99 * self.stages[name]))

    def finished(self, name: str) -> None:
        self.done_s += self.stages[name]
        self._move(self.done_s)

    def _move(self, seconds: float) -> None:
        self.bar.update(max(round(seconds) - self.bar.n, 0))

    def close(self) -> None:
        self.bar.close()


def run_stage(name: str, argv: list[str], log_path: Path, timings: Path, progress: Progress,
              watch: Callable[[], str]) -> None:
    """Run one stage's command with its output in ``log_path``, showing ``watch()`` (how far it is) on the bar;
    add its wall seconds to ``timings``.

    The seconds of every stage that ever finished are kept in ``timings`` (JSON), so the
    demo's reported time covers all stages even when a rerun reuses some of them.
    """
    progress.say(f"[{name}] $ {' '.join(argv)}")
    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            while proc.poll() is None:
                progress.running(name, time.monotonic() - start, watch())
                time.sleep(POLL_S)
        finally:
            if proc.poll() is None:  # interrupted: the stage resumes when the demo is rerun
                proc.terminate()
                proc.wait()
    if proc.returncode:
        tail = "\n".join(log_path.read_text().replace("\r", "\n").splitlines()[-15:])
        raise StageFailed(f"{name} failed (exit {proc.returncode}): {' '.join(argv)}\n{tail}")
    seconds = json.loads(timings.read_text()) if timings.exists() else {}
    seconds[name] = round(time.monotonic() - start, 1)
    atomic_write_text(timings, json.dumps(seconds, indent=2) + "\n")


def read_json(path: Path) -> Any:
    """``path``'s JSON, or None while it does not exist yet (the stages write their files atomically)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def epochs_done(out: Path, epochs: int) -> Callable[[], str]:
    def watch() -> str:
        try:
            done = len((out / "metrics.jsonl").read_text().splitlines())
        except OSError:
            done = 0
        return f"epoch {min(done + 1, epochs)}/{epochs}"
    return watch


def images_done(out: Path) -> Callable[[], str]:
    def watch() -> str:
        summary = (read_json(out / "results.json") or {}).get("summary")
        if not summary:
            return "first chunk"
        return f"{summary['images']}/{summary['total_images']} images, median L2 so far {summary['median']:.3f}"
    return watch


def train(model: str, args: argparse.Namespace, settings: Settings, progress: Progress) -> dict[str, Any]:
    """Train (or reuse) one model; its training summary."""
    out = args.output / model
    summary_path = out / "summary.json"
    name = f"train {model}"
    if not (summary_path.exists() and (out / "artifact" / "manifest.json").exists()):
        out.mkdir(parents=True, exist_ok=True)
        argv = ["training/train_tiny.py", "--recipe", "fmnist-cpu", *LOSS_FLAGS[model],
                "--epochs", str(settings.epochs[model]), "--train-images", str(settings.train_images),
                "--eval-images", str(settings.eval_images), "--final-eval-images", str(settings.final_eval_images),
                "--output", str(out), "--resume", "--no-progress"]
        if args.data:
            argv += ["--data", str(args.data)]
        run_stage(name, argv, out / "train.log", args.output / TIMINGS, progress,
                  epochs_done(out, settings.epochs[model]))
        verb = "done"
    else:
        verb = f"reusing {out}"
    summary = json.loads(summary_path.read_text())
    final = summary["final"]
    progress.finished(name)
    progress.say(f"[{name}] {verb}: clean accuracy {final['clean_accuracy']:.2%}, PGD-20 accuracy "
                 f"{final['pgd_accuracy']:.2%} ({final['eval_images']} test images)")
    return summary


def score(model: str, args: argparse.Namespace, settings: Settings, progress: Progress) -> dict[str, Any]:
    """Serve the model's artifact as the container would and score it over gRPC; the score report."""
    out = args.output / f"score-{model}"
    report = out / "results.json"
    name = f"score {model}"
    if (read_json(report) or {}).get("complete"):
        verb = f"reusing {out}"
    else:
        port = free_port()
        serve = [sys.executable, "-m", "defense", "serve", "--model", str(args.output / model / "artifact"),
                 "--host", "127.0.0.1", "--port", str(port)]
        progress.say(f"[serve {model}] $ {' '.join(serve[1:])}")
        with ServerProcess(serve, ROOT) as server:
            wait_serving(server, f"127.0.0.1:{port}", timeout_s=120)
            argv = ["attacks/score.py", "--target", f"127.0.0.1:{port}", "--dataset", "fashion_mnist",
                    "--images", str(settings.score_images), "--budget", str(settings.budget), "--preset", "top5",
                    *(arg for s in SURROGATES for arg in ("--surrogate", str(args.output / s / "artifact"))),
                    "--seed", "0", "--output", str(out), "--no-progress"]
            if args.data:
                argv += ["--data", str(args.data)]
            run_stage(name, argv, args.output / f"score-{model}.log", args.output / TIMINGS, progress,
                      images_done(out))
            server.stop()
        verb = "done"
    results = json.loads(report.read_text())
    s = results["summary"]
    progress.finished(name)
    progress.say(f"[{name}] {verb}: mean minimal L2 {s['mean']:.3f}, median {s['median']:.3f} over {s['images']} "
                 f"images ({s['clean_accuracy']:.0%} clean accuracy)")
    return results


def table(rows: dict[str, dict[str, Any]]) -> str:
    """The results table in Markdown: accuracies, min-L2 mean and median, per-attack medians."""
    attacks = sorted({a for r in rows.values() for a in r["attack_medians"]})
    head = ["model", "clean acc", "PGD-20 acc", "mean L2", "median L2", *(f"{a} median" for a in attacks)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        cells = [name, f"{r['clean_accuracy']:.2%}", f"{r['pgd_accuracy']:.2%}", f"{r['mean_l2']:.3f}",
                 f"{r['median_l2']:.3f}", *(f"{r['attack_medians'].get(a, float('nan')):.3f}" for a in attacks)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_cdf(distances: dict[str, list[float]], path: Path) -> None:
    """Both models' per-image minimal L2 as empirical CDFs on one figure."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name, d in distances.items():
        d = sorted(d)
        ax.step(d, [(i + 1) / len(d) for i in range(len(d))], where="post",
                label=f"{name} (median {statistics.median(d):.2f})")
    ax.set_xlim(left=0)  # a distance is never negative: the axis starts at 0 even when every image is at 0
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("minimal L2 perturbation (pixels in [0, 1])")
    ax.set_ylabel("fraction of images fooled within")
    ax.set_title("Label-only attacks (top-5 suite) on Fashion-MNIST")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 epoch on 20000 images per model, 16 images at 200 queries (default: off)")
    p.add_argument("--output", type=Path, default=None,
                   help="every stage's output; rerunning with the same folder reuses finished stages "
                        "(default: runs/demo, or runs/demo-quick with --quick)")
    p.add_argument("--data", type=Path, default=None,
                   help="Fashion-MNIST IDX folder (default: the training and scoring tools' own default, "
                        "/usr/share/datasets/fashion-mnist)")
    add_progress(p)
    o = p.add_argument_group("overrides of the demo's (or --quick's) settings")
    o.add_argument("--epochs", type=int, default=None,
                   help=f"epochs of every model (demo: {FULL.epochs}; quick: {QUICK.epochs})")
    o.add_argument("--train-images", type=int, default=None,
                   help=f"first N training images, 0 = all (demo: {FULL.train_images}; quick: {QUICK.train_images})")
    o.add_argument("--eval-images", type=int, default=None,
                   help=f"test images of the per-epoch PGD-20 evaluation (demo: {FULL.eval_images}; "
                        f"quick: {QUICK.eval_images}); the final one uses 4x as many")
    o.add_argument("--images", type=int, default=None,
                   help=f"test images each model is scored on (demo: {FULL.score_images}; quick: {QUICK.score_images})")
    o.add_argument("--budget", type=int, default=None,
                   help=f"queries per image per attack (demo: {FULL.budget}; quick: {QUICK.budget})")
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    """``FULL`` or ``QUICK`` with the override flags applied."""
    base = QUICK if args.quick else FULL
    changes: dict[str, Any] = {}
    if args.epochs is not None:
        changes["epochs"] = dict.fromkeys(base.epochs, args.epochs)
    if args.eval_images is not None:
        changes.update(eval_images=args.eval_images, final_eval_images=4 * args.eval_images)
    for flag, field in (("train_images", "train_images"), ("images", "score_images"), ("budget", "budget")):
        if getattr(args, flag) is not None:
            changes[field] = getattr(args, flag)
    if any(v < 1 for k, v in changes.items() if k not in ("epochs", "train_images")) \
            or (args.epochs is not None and args.epochs < 1) or changes.get("train_images", 0) < 0:
        raise ValueError("--epochs, --eval-images, --images and --budget must be >= 1, --train-images >= 0")
    return replace(base, **changes)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.output = args.output or Path("runs/demo-quick" if args.quick else "runs/demo")
    if args.data is not None and not args.data.is_dir():
        parser.error(f"--data {args.data}: expected a folder with the Fashion-MNIST IDX files")
    try:
        settings = settings_from(args)
    except ValueError as err:
        parser.error(str(err))
    args.output.mkdir(parents=True, exist_ok=True)
    record = args.output / "settings.json"
    wanted = json.dumps({"data": str(args.data or ""), **asdict(settings)}, indent=2) + "\n"
    if record.exists() and record.read_text() != wanted:
        parser.error(f"{args.output} holds a demo run with other settings ({record}); "
                     "pass another --output or delete that folder")
    atomic_write_text(record, wanted)
    start = time.monotonic()
    progress = Progress(expected_seconds(args), args.progress)
    try:
        summaries = {m: train(m, args, settings, progress) for m in (*SCORED, *SURROGATES)}
        reports = {m: score(m, args, settings, progress) for m in SCORED}
    except StageFailed as err:
        progress.close()
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        progress.close()
        print(f"\ninterrupted: rerun the same command to resume ({args.output} keeps every finished stage)",
              file=sys.stderr)
        return 130
    progress.close()
    rows = {m: row(summaries[m], reports[m]) for m in SCORED}
    wall = time.monotonic() - start
    stages = json.loads((args.output / TIMINGS).read_text()) if (args.output / TIMINGS).exists() else {}
    total = sum(stages.values())
    text = table(rows)
    ratio = rows["trades"]["mean_l2"] / rows["natural"]["mean_l2"] if rows["natural"]["mean_l2"] else float("inf")
    plot_cdf({m: reports[m]["distances"] for m in SCORED}, args.output / "cdf.png")
    result = {"settings": {"quick": args.quick, **asdict(settings)}, "models": rows, "wall_s": wall,
              "stage_seconds": stages, "stages_total_s": total,
              "trades_over_natural_mean_l2": ratio, "trades_avc_version": __version__,
              "command": " ".join(["python", "demo/run.py", *(argv or sys.argv[1:])])}
    atomic_write_text(args.output / "results.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.output / "results.md", f"# Demo results\n\n{text}\n\nTRADES / natural mean minimal L2: "
                                                   f"{ratio:.2f}x. Stages: {total / 60:.1f} min in all "
                                                   f"({', '.join(f'{k} {v:.0f} s' for k, v in stages.items())}); "
                                                   f"this invocation {wall / 60:.1f} min.\n")
    print(f"\n{text}\n\nTRADES / natural mean minimal L2: {ratio:.2f}x   stages {total / 60:.1f} min in all, "
          f"this invocation {wall / 60:.1f} min")
    print(f"results: {args.output / 'results.md'}  {args.output / 'results.json'}  {args.output / 'cdf.png'}")
    print(next_steps(args.output))
    return 0


def expected_seconds(args: argparse.Namespace) -> dict[str, float]:
    """Each stage's estimate: its time in this folder's earlier run if it has one, else the measured default."""
    earlier = read_json(args.output / TIMINGS) or {}
    default = EXPECTED_S["quick" if args.quick else "full"]
    return {name: float(earlier.get(name, seconds)) for name, seconds in default.items()}


def next_steps(output: Path) -> str:
    """Where to look next, and the commands to serve and score the trained model yourself."""
    surrogates = " ".join(f"--surrogate {output / s / 'artifact'}" for s in SURROGATES)
    return "\n".join([
        "next:",
        f"  reports per model: {output / 'score-trades' / 'report.md'}, {output / 'score-natural' / 'report.md'} "
        f"(with cdf.png, gallery.png, adversarials/)",
        f"  serve the TRADES model:  python -m defense serve --model {output / 'trades' / 'artifact'}",
        f"  score it yourself:       python attacks/score.py --target localhost:50051 {surrogates}",
        "  the rules and the report's fields: docs/scoring.md"])


def row(summary: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """One table row from a training summary (white-box accuracies) and a score report (label-only L2)."""
    final = summary["final"]
    s = report["summary"]
    return {"clean_accuracy": final["clean_accuracy"], "pgd_accuracy": final["pgd_accuracy"],
            "eval_images": final["eval_images"], "mean_l2": s["mean"], "median_l2": s["median"],
            "attack_medians": {a: v["median"] for a, v in s["attacks"].items()}, "scored_images": s["images"]}


if __name__ == "__main__":
    sys.exit(main())
