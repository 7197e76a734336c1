"""Our label-only attacks against Foolbox 3's on the same model, images and per-image query budget.

For each model (default: the naturally and the TRADES-trained Fashion-MNIST artifacts; ``natural-64``
and ``trades-64`` are their 64x64x3 proxies of the competition's shape, :mod:`bench.targets`) the
bench takes the first ``--images`` test images the model classifies correctly and attacks
them with every method, each from scratch with ``--budget`` queries per image:

- ours (``attacks/``): by default the Boundary Attack and HSJA at their defaults, and any attack of
  the registry named in ``--methods`` (``geoda``, ``cgba``, ``prior_geoda``, ...), all images in one
  vectorised run behind a wrapper that counts model calls (the mean images per call is
  what a server would see as its batch size); attacks that craft on surrogates get the
  ``--surrogates`` that take the model's input shape;
- Foolbox 3 (``foolbox==3.3.4``, bench-only) ``BoundaryAttack`` and ``HopSkipJumpAttack``,
  at their defaults and at settings tuned for this budget (:data:`FOOLBOX_TUNED`), run
  as docs/benchmarks.md "Comparing with Foolbox 3 fairly" says: one image at a time (its
  attacks are batch-synchronous), on a label-only view of the net (one-hot argmax of the
  uint8-rounded input), scored by the closest misclassified query among each image's
  first ``--budget``. Once an image's budget is spent the next query stops Foolbox (it
  is never answered falsely): nothing it does afterwards could count.

Every method is scored alike: L2 on [0, 1] of the uint8 image the model classified,
and every reported adversarial is classified again at the end (exit 1 if one is not).

    python bench/attack_bench.py --json attacks.json              # natural and trades, 100 images
    python bench/attack_bench.py --models natural --images 16 --methods hsja,foolbox-hsja-tuned \\
        --set foolbox-hsja-tuned.gamma=100                   # try a setting

Ends with one ``name: value`` line per goal and model, e.g. ``natural ours/foolbox hsja median ratio: 0.80``.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import shlex
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from attacks import ATTACKS, PRESETS, ArtifactModel, Attack, LabelOnlyModel, build_attack, build_suite, name_attacks
from attacks.access.lattice import l2
from attacks.methods.suite import SURROGATE_ATTACKS, SuiteEntry
from attacks.scoring.evaldata import first_correct
from attacks.scoring.pipeline import SuiteRun
from attacks.whitebox.reference import minimal_l2
from avc_common.atomic import atomic_write_text
from avc_common.cli import HelpFormatter
from avc_common.data.fashion_mnist import FASHION_MNIST_DIR
from avc_common.images import to_uint8, to_unit
from avc_common.tensors import to_hwc, to_model_input
from bench.targets import MODELS, ROOT, fitting, input_shape, parse_models, test_split

FOOLBOX = {"foolbox-boundary": "BoundaryAttack", "foolbox-boundary-tuned": "BoundaryAttack",
           "foolbox-hsja": "HopSkipJumpAttack", "foolbox-hsja-tuned": "HopSkipJumpAttack"}
# Foolbox settings for a 1000-query budget, picked on held-out test images (16 from index 5000, e.g.
# --offset 5000 --images 16 --methods foolbox-hsja-tuned --set foolbox-hsja-tuned.gamma=100); per model
# name, "*" for any other model.
# The same settings won on both models: HSJA gamma 100 (probes about 0.13x the distance) with 25
# initial gradient probes; Boundary a 10x larger spherical step (the spherical step never adapts
# within 1000 queries: its success-rate queue takes one entry per 10 steps and needs 100).
FOOLBOX_TUNED: dict[str, dict[str, dict[str, Any]]] = {
    "*": {"foolbox-boundary-tuned": {"spherical_step": 0.1},
          "foolbox-hsja-tuned": {"gamma": 100.0, "initial_gradient_eval_steps": 25}},
}
METHODS = [*ATTACKS, *FOOLBOX, "suite", "whitebox"]  # ours: any registered attack, at its defaults
DEFAULT_METHODS = ["boundary", "hsja", *FOOLBOX, "suite", "whitebox"]
SURROGATES = sorted(p.parent for p in ROOT.glob("runs/fmnist*-surrogate*/artifact/manifest.json"))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Result:
    """One method on one model: per-image verified distance (inf: not fooled), adversarial, queries spent."""

    method: str
    settings: str
    distances: np.ndarray
    adversarials: np.ndarray | None  # uint8 N x H x W x C (None: verified by the method itself)
    queries: np.ndarray
    seconds: float
    calls: int = 0
    images_sent: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return float(np.median(self.distances))

    @property
    def images_per_call(self) -> float:
        return self.images_sent / self.calls if self.calls else float("nan")


# --- ours --------------------------------------------------------------------------------

def run_ours(attacks: dict[str, Attack], model: LabelOnlyModel, images: np.ndarray, labels: np.ndarray,
             budget: int, seed: int, chain: bool = False) -> list[Result]:
    """Our attacks exactly as the scorer runs them (:class:`attacks.scoring.pipeline.SuiteRun`): all images in one
    chunk, each attack on a fresh ledger with the whole per-image budget (the clean check is one of its queries);
    ``chain``: each from the adversarials of those before it, as ``score.py --chain``."""
    with tempfile.TemporaryDirectory(prefix="bench-attacks-") as state_dir:
        run = SuiteRun(model, images, labels, attacks, Path(state_dir), budget=budget, seed=seed,
                       batch_images=len(images), chain=chain)
        chunk = run.run(lambda chunks: None)[0]
    return [Result(name, repr(attack), r.distances, r.best, r.queries, r.seconds, r.calls, int(r.queries.sum()))
            for (name, attack), r in zip(attacks.items(), chunk.attacks, strict=True)]


def suite_min(name: str, members: list[Result]) -> Result:
    """The suite's score per image: the minimum over its attacks (each spent its own budget, so queries add up)."""
    distances = np.array([m.distances for m in members])
    winner = distances.argmin(axis=0)
    rows = np.arange(distances.shape[1])
    return Result(name, " + ".join(m.method for m in members), distances[winner, rows],
                  np.stack([members[w].adversarials[i] for i, w in enumerate(winner)]),
                  sum(m.queries for m in members), sum(m.seconds for m in members),
                  sum(m.calls for m in members), sum(m.images_sent for m in members))


# --- Foolbox -----------------------------------------------------------------------------

class BudgetSpent(Exception):
    """Raised at an image's first query past the budget, to stop Foolbox (nothing later counts)."""


class FoolboxProbe(torch.nn.Module):
    """The net as Foolbox sees it: one-hot argmax (labels only) of the uint8-rounded input, with a ledger.

    Serves one image at a time (:meth:`reset`); Foolbox's batches are then one row each. Of
    that image's first ``budget`` queries, keeps the closest misclassified one, as the
    uint8 image the net classified.
    """

    def __init__(self, net: Callable[[torch.Tensor], torch.Tensor], num_classes: int, budget: int) -> None:
        super().__init__()
        self.net = net
        self.num_classes = num_classes
        self.budget = budget
        self.bar: tqdm | None = None
        self.reset(np.zeros((1, 1, 1), dtype=np.uint8), 0)

    def reset(self, clean: np.ndarray, label: int) -> None:
        """Start a new image (uint8 H x W x C) with true ``label``."""
        self.clean, self.label = clean, label
        self.used = 0
        self.best_l2 = np.inf
        self.best = clean.copy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.used + len(x) > self.budget:
            raise BudgetSpent
        sent = to_uint8(to_hwc(x))
        with torch.inference_mode():
            labels = self.net(to_model_input(sent)).argmax(dim=1)
        self.used += len(x)
        if self.bar is not None:
            self.bar.update(len(x))
        adv = np.flatnonzero(labels.numpy() != self.label)
        if len(adv):
            dist = l2(to_unit(sent[adv]), to_unit(np.repeat(self.clean[None], len(adv), axis=0)))
            if dist.min() < self.best_l2:
                self.best_l2, self.best = float(dist.min()), sent[adv[dist.argmin()]]
        return torch.nn.functional.one_hot(labels, self.num_classes).float()


def run_foolbox(method: str, settings: dict[str, Any], net: Callable[[torch.Tensor], torch.Tensor],
                num_classes: int, images: np.ndarray, labels: np.ndarray, budget: int, seed: int) -> Result:
    """A Foolbox attack on one image at a time (seeded per image), scored within each image's first ``budget``."""
    import foolbox

    attack = getattr(foolbox.attacks, FOOLBOX[method])(**settings)
    probe = FoolboxProbe(net, num_classes, budget).eval()
    fmodel = foolbox.PyTorchModel(probe, bounds=(0, 1))
    n = len(images)
    distances, queries, adversarials = np.full(n, np.inf), np.zeros(n, dtype=np.int64), images.copy()
    start = time.perf_counter()
    with tqdm(total=budget * n, desc=method, unit="q", leave=False, file=sys.stderr) as bar:
        probe.bar = bar
        for i in range(n):
            probe.reset(images[i], int(labels[i]))
            torch.manual_seed(seed * 1_000_003 + i)
            x = to_model_input(images[i:i + 1]).contiguous()
            try:
                with warnings.catch_warnings():  # its noise start failing within the budget: left unfooled
                    warnings.filterwarnings("ignore", "LinearSearchBlendedUniformNoiseAttack failed")
                    attack.run(fmodel, x, torch.tensor(labels[i:i + 1]))
            except BudgetSpent:
                pass
            bar.update(budget - probe.used)
            distances[i], queries[i], adversarials[i] = probe.best_l2, probe.used, probe.best
            bar.set_postfix(median=f"{np.median(distances[:i + 1]):.3f}")
    return Result(method, f"foolbox.attacks.{FOOLBOX[method]}({settings})", distances, adversarials, queries,
                  time.perf_counter() - start, calls=int(queries.sum()), images_sent=int(queries.sum()))


# --- the bench ---------------------------------------------------------------------------

def verify(model: LabelOnlyModel, result: Result, images: np.ndarray, labels: np.ndarray) -> int:
    """Images whose reported adversarial is not misclassified, or not at its reported distance (0: all good)."""
    fooled = np.flatnonzero(np.isfinite(result.distances))
    if not len(fooled) or result.adversarials is None:
        return 0
    wrong = model(result.adversarials[fooled]) == labels[fooled]
    dist = l2(to_unit(result.adversarials[fooled]), to_unit(images[fooled]))
    return int(np.count_nonzero(wrong | ~np.isclose(dist, result.distances[fooled], rtol=1e-5, atol=1e-6)))


def settings_for(method: str, model_name: str, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    tuned = FOOLBOX_TUNED.get(model_name, FOOLBOX_TUNED["*"]).get(method, {})
    return {**tuned, **overrides.get(method, {})}


def suite_attacks(preset: str, surrogates: list[Path]) -> dict[str, Attack]:
    """``build_suite(preset, surrogates)`` keyed ``preset:NAME`` (:func:`attacks.name_attacks`), in suite order."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attacks = build_suite(preset, surrogates=[str(s) for s in surrogates])
    for warning in caught:
        log(f"note: {warning.message}")
    return {f"{preset}:{name}": attack for name, attack in name_attacks(attacks).items()}


def run_whitebox(net: Callable[[torch.Tensor], torch.Tensor], images: np.ndarray, labels: np.ndarray,
                 steps: int, starts: np.ndarray | None) -> Result:
    """The scorer's white-box reference (FMN, :func:`attacks.whitebox.reference.minimal_l2`, which verifies on the
    lattice), from the clean images and, as the scorer does, from ``starts`` (the suite's adversarials; None: no suite
    ran)."""
    start = time.perf_counter()
    with tqdm(total=1, desc="whitebox", leave=False, file=sys.stderr):
        distances = minimal_l2(net, images, labels, steps=steps, starts=starts)
    origin = "clean" if starts is None else "clean and suite"
    return Result("whitebox", f"minimal_l2(steps={steps}, from {origin})", distances, None,
                  np.zeros(len(images), dtype=np.int64), time.perf_counter() - start)


def bench_model(name: str, art_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    model = ArtifactModel(art_dir)
    shape = model.info.shape
    images, labels = test_split(args.data, shape)
    picked = first_correct(model, images, labels, args.offset, args.images)
    x, y = images[picked], labels[picked]
    surrogates = fitting(args.surrogates, shape)
    log(f"{name}: {art_dir}, test images {picked[0]}..{picked[-1]} ({len(picked)} correctly classified), "
        f"{len(surrogates)} surrogate(s) of its shape")
    results: list[Result] = []
    for method in (m for m in args.methods if m in ATTACKS):  # one run each: the same seed whatever else runs
        attack = build_attack(SuiteEntry(method, settings_for(method, name, args.set)), surrogates)
        results += run_ours({method: attack}, model, x, y, args.budget, args.seed)
    ours_results = list(results)
    for method in (m for m in args.methods if m in FOOLBOX):
        results.append(run_foolbox(method, settings_for(method, name, args.set), model.net,
                                   model.info.num_classes, x, y, args.budget, args.seed))
    starts = None
    if "suite" in args.methods:
        members = run_ours(suite_attacks(args.preset, surrogates), model, x, y, args.budget, args.seed, args.chain)
        suite = suite_min(f"{args.preset} (min)", members)
        results += [*members, suite]
        ours_results += members
        starts = suite.adversarials
    if "whitebox" in args.methods:
        results.append(run_whitebox(model.net, x, y, args.whitebox_steps, starts))
    for result in results:
        result.extra["unverified"] = verify(model, result, x, y)
        log(f"  {result.method:<24} median {result.median:.4f}  {result.seconds:7.1f} s  {result.settings}")
    best = np.min([r.distances for r in results], axis=0)
    return {"name": name, "artifact": str(art_dir), "indices": picked, "labels": y, "results": results,
            "best_known": best, "ours": ours_results}


def best_of(results: list[Result], prefix: str) -> Result | None:
    """The method whose name starts with ``prefix`` with the smallest median (e.g. Foolbox HSJA default or tuned)."""
    found = [r for r in results if r.method.startswith(prefix)]
    return min(found, key=lambda r: r.median) if found else None


def figures(run: dict[str, Any], preset: str) -> list[tuple[str, float]]:
    """The goal lines of one model: ratios of medians (Foolbox HSJA: its better setting) and our images per call."""
    by_name = {r.method: r for r in run["results"]}
    foolbox_hsja = best_of(run["results"], "foolbox-hsja")
    suite, whitebox = by_name.get(f"{preset} (min)"), by_name.get("whitebox")
    out = []
    if "hsja" in by_name and foolbox_hsja is not None:
        out.append(("ours/foolbox hsja median ratio", by_name["hsja"].median / foolbox_hsja.median))
    if suite is not None and foolbox_hsja is not None:
        out.append(("suite/foolbox-hsja median ratio", suite.median / foolbox_hsja.median))
    if suite is not None and whitebox is not None:
        out.append(("suite/whitebox median ratio", suite.median / whitebox.median))
    if run["ours"]:
        out.append(("mean images per model call",
                    sum(r.images_sent for r in run["ours"]) / sum(r.calls for r in run["ours"])))
    return [(f"{run['name']} {label}", value) for label, value in out]


def gap(run: dict[str, Any], preset: str, worst: int = 5) -> dict[str, Any] | None:
    """Where the suite is farthest from the white-box reference: the per-image ratio's quantiles, how often each
    member won on the images with the largest ratios, and those images (test index, both distances, ratio)."""
    by_name = {r.method: r for r in run["results"]}
    suite, whitebox = by_name.get(f"{preset} (min)"), by_name.get("whitebox")
    if suite is None or whitebox is None:
        return None
    ratio = suite.distances / whitebox.distances
    order = np.argsort(-ratio)
    members = [r for r in run["results"] if r.method.startswith(f"{preset}:")]
    winner = np.array([m.distances for m in members]).argmin(axis=0)
    top = order[:max(len(ratio) // 4, 1)]
    return {"ratio_quantiles": {f"p{q}": float(np.quantile(ratio, q / 100)) for q in (10, 25, 50, 75, 90)},
            "winners_in_worst_quarter": {m.method: int(np.sum(winner[top] == i)) for i, m in enumerate(members)},
            "worst": [{"test_index": int(run["indices"][i]), "suite": float(suite.distances[i]),
                       "whitebox": float(whitebox.distances[i]), "ratio": float(ratio[i])} for i in order[:worst]]}


def table(runs: list[dict[str, Any]]) -> str:
    lines = ["| model | method | median L2 | mean L2 (fooled) | fooled | queries/image (max) | wall s | images/call |",
             "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        rows = [(r.method, r.distances, f"{r.queries.mean():.0f} ({r.queries.max()})", f"{r.seconds:.1f}",
                 f"{r.images_per_call:.1f}") for r in run["results"]]
        rows.append(("best known (min of all)", run["best_known"], "", "", ""))
        for method, distances, queries, seconds, per_call in rows:
            fooled = np.isfinite(distances)
            mean = f"{distances[fooled].mean():.4f}" if fooled.any() else "-"
            lines.append(f"| {run['name']} | {method} | {np.median(distances):.4f} | {mean} | "
                         f"{fooled.sum()}/{len(fooled)} | {queries} | {seconds} | {per_call} |")
    return "\n".join(lines)


def to_json(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def dist(values: np.ndarray) -> list[float | None]:
        return [float(v) if np.isfinite(v) else None for v in values]
    return [{"name": run["name"], "artifact": run["artifact"], "test_indices": run["indices"].tolist(),
             "labels": run["labels"].tolist(), "best_known": dist(run["best_known"]),
             "methods": {r.method: {"settings": r.settings, "median_l2": r.median, "seconds": r.seconds,
                                    "calls": r.calls, "images_sent": r.images_sent,
                                    "distances": dist(r.distances), "queries": r.queries.tolist(), **r.extra}
                         for r in run["results"]}}
            for run in runs]


def parse_sets(entries: list[str]) -> dict[str, dict[str, Any]]:
    """``METHOD.KEY=VALUE`` entries (VALUE a Python literal, else a string) as per-method settings."""
    out: dict[str, dict[str, Any]] = {}
    for entry in entries:
        target, eq, text = entry.partition("=")
        method, dot, key = target.partition(".")
        if not (eq and dot and key) or method not in METHODS:
            raise ValueError(f"--set {entry!r}: expected METHOD.KEY=VALUE with METHOD one of {', '.join(METHODS)}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        out.setdefault(method, {})[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--models", default="natural,trades",
                   help=f"comma-separated: {', '.join(f'{k} ({v.relative_to(ROOT)})' for k, v in MODELS.items())}, "
                        f"or NAME=ARTIFACT_DIR")
    p.add_argument("--data", type=Path, default=FASHION_MNIST_DIR,
                   help="Fashion-MNIST folder (IDX files), read at each model's shape (28x28x1 or the 64x64x3 proxy)")
    p.add_argument("--images", type=int, default=100, help="attack the first this many correctly classified "
                                                           "test images (per model)")
    p.add_argument("--offset", type=int, default=0, help="first test image considered (tune on a later range)")
    p.add_argument("--budget", type=int, default=1000, help="queries per image, for every method")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated: any of {', '.join(METHODS)}")
    p.add_argument("--skip-foolbox", action="store_true", help="leave out the Foolbox methods")
    p.add_argument("--preset", default="top5", help=f"the suite (attacks.PRESETS: {', '.join(PRESETS) or 'none yet'})")
    p.add_argument("--chain", action="store_true",
                   help="run the suite chained, each attack from the adversarials of those before it (score.py "
                        "--chain); its members' figures are then the best after each")
    p.add_argument("--surrogates", default=",".join(map(str, SURROGATES)),
                   help="comma-separated surrogate artifact folders for the attacks that use them; each model gets "
                        "those of its input shape (every runs/fmnist*-surrogate*/artifact by default; empty: none)")
    p.add_argument("--whitebox-steps", type=int, default=1000, help="FMN steps per run of the white-box reference")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="override one setting of a method (repeatable), e.g. foolbox-hsja-tuned.gamma=100 or "
                        "hsja.min_probe=1")
    p.add_argument("--seed", type=int, default=0, help="seed of our attacks' generator and Foolbox's torch seeds")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (0: torch's default); on a shared machine more threads than idle cores "
                        "make Foolbox's one-image forwards crawl (40x here)")
    p.add_argument("--json", type=Path, default=None, help="also write every figure and per-image distance here")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    try:
        models = parse_models(args.models)
        args.set = parse_sets(args.set)
        args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        if unknown := sorted(set(args.methods) - set(METHODS)):
            raise ValueError(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
        if args.skip_foolbox:
            args.methods = [m for m in args.methods if m not in FOOLBOX]
        if args.images < 1 or args.budget < 1 or args.offset < 0 or args.whitebox_steps < 1:
            raise ValueError("--images, --budget and --whitebox-steps must be >= 1, --offset >= 0")
        args.surrogates = [Path(s.strip()) for s in args.surrogates.split(",") if s.strip()]
        if missing := [str(s) for s in args.surrogates if not (s / "manifest.json").is_file()]:
            raise ValueError(f"--surrogates: no model artifact at {', '.join(missing)}")
        if "suite" in args.methods and args.preset not in PRESETS:
            raise ValueError(f"--preset: unknown {args.preset!r}; choose one of "
                             f"{', '.join(PRESETS) or '(none defined)'} or leave out the suite (--methods)")
        for name, path in models.items():  # every model's data and surrogates exist, before any work
            shape = input_shape(path)
            test_split(args.data, shape)
            needs = sorted(m for m in args.methods if m in SURROGATE_ATTACKS)
            if needs and not fitting(args.surrogates, shape):
                raise ValueError(f"{', '.join(needs)} craft on surrogates, and none of --surrogates takes model "
                                 f"{name}'s {' x '.join(map(str, shape))} images")
        if any(m in FOOLBOX for m in args.methods):
            try:
                import foolbox
            except ImportError:
                raise ValueError("foolbox is not installed (a bench-only dependency): "
                                 "pip install foolbox==3.3.4, or pass --skip-foolbox") from None
    except ValueError as err:  # DatasetLayoutError is one
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    machine = f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    if any(m in FOOLBOX for m in args.methods):
        import foolbox
        machine += f", foolbox {foolbox.__version__}"
    log(f"machine: {machine}")
    try:
        runs = [bench_model(name, path, args) for name, path in models.items()]
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    print(f"\nMedian verified L2 on [0, 1], {args.budget} queries per image, {args.images} Fashion-MNIST test images "
          f"per model (first correctly classified from index {args.offset}), seed {args.seed}; {machine}")
    print(table(runs))
    lines = [line for run in runs for line in figures(run, args.preset)]
    gaps = {run["name"]: found for run in runs if (found := gap(run, args.preset)) is not None}
    for name, found in gaps.items():
        quantiles = ", ".join(f"{q} {v:.2f}" for q, v in found["ratio_quantiles"].items())
        print(f"\n{name}: suite/whitebox per image: {quantiles}; wins in the worst quarter: "
              + ", ".join(f"{m} {c}" for m, c in found["winners_in_worst_quarter"].items()))
        print("  worst: " + "; ".join(f"test {w['test_index']} {w['suite']:.3f}/{w['whitebox']:.3f} = "
                                      f"{w['ratio']:.2f}" for w in found["worst"]))
    unverified = sum(r.extra["unverified"] for run in runs for r in run["results"])
    if args.json:
        atomic_write_text(args.json, json.dumps({
            "machine": machine, "command": shlex.join(["python", "bench/attack_bench.py", *argv]),
            "args": vars(args), "models": to_json(runs), "figures": dict(lines), "gaps": gaps},
            indent=2, default=str) + "\n")
    if unverified:
        print(f"\n{unverified} reported adversarial(s) failed re-verification")
    print()
    for name, value in lines:
        print(f"{name}: {value:.2f}")
    return 1 if unverified else 0


if __name__ == "__main__":
    sys.exit(main())
