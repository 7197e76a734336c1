"""Choose attack presets by measuring: every candidate attack alone, then the best suites of 1-5 of them.

Each candidate runs on a fresh :class:`attacks.BudgetedModel` (its own ``--budget``
queries per image, as the scorer runs a suite), all images in one vectorised run. A
suite's distance for an image is the minimum over its attacks, so the best suites
combine attacks that win on different images; subsets are ranked by the geometric mean,
over the models, of their median distance. Models are names of :data:`bench.targets.MODELS`
(Fashion-MNIST at 28x28x1, and ``natural-64``/``trades-64`` on its 64x64x3 proxy of the
competition's shape) or ``NAME=ARTIFACT_DIR``; each reads the test images at its own shape and
its surrogate attacks get the ``--surrogates`` of that shape. The presets in
``attacks/methods/suite.py`` were chosen with the commands of docs/benchmarks.md "Choosing the
top5 preset", e.g.::

    python bench/presets.py --json runs/presets-28.json --models natural,trades --surrogates $S

Rerunning with the same ``--json`` skips the candidates already measured there.
Exit codes: 0 done, 2 bad input.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from attacks import PRESETS, ArtifactModel, BudgetedModel, SuiteEntry, build_attack
from attacks.methods.suite import CGBA, PRIOR_CGBA, PRIOR_GEODA, TRANSFER_BIASED, TRANSFER_CGBA
from attacks.scoring.evaldata import first_correct
from avc_common.atomic import atomic_write_text
from avc_common.cli import HelpFormatter
from avc_common.data.fashion_mnist import FASHION_MNIST_DIR
from bench.targets import MODELS, fitting, input_shape, parse_models, test_split

ROBUST_BIASED = SuiteEntry("biased_boundary", {"gradient_from": "robust"})  # the top5's before it was adaptive

# label -> attack; surrogate attacks (nested ones too) get the --surrogates of the model's shape
CANDIDATES: dict[str, SuiteEntry] = {
    "geoda": SuiteEntry("geoda"),
    "geoda-0.25": SuiteEntry("geoda", {"freq": 0.25}),
    "geoda-0.125": SuiteEntry("geoda", {"freq": 0.125}),
    "cgba": CGBA,
    "cgba-0.125": SuiteEntry("cgba", {"freq": 0.125}),
    "cgba-h": SuiteEntry("cgba", {"variant": "cgba_h"}),
    "prior_geoda": PRIOR_GEODA,
    "prior_geoda-0.25": SuiteEntry("prior_geoda", {"freq": 0.25}),
    "prior_cgba": PRIOR_CGBA,
    "prior_cgba-caution0": SuiteEntry("prior_cgba", {"caution": 0.0}),
    "boundary": SuiteEntry("boundary"),
    "hsja": SuiteEntry("hsja"),
    "hsja-lowfreq": SuiteEntry("hsja", {"freq": 0.5}),
    "hsja-0.25": SuiteEntry("hsja", {"freq": 0.25}),
    "tangent": SuiteEntry("tangent"),
    "tangent-0.25": SuiteEntry("tangent", {"freq": 0.25}),
    "triangle": SuiteEntry("triangle"),
    "triangle-0.5": SuiteEntry("triangle", {"freq": 0.5}),
    "biased_boundary": SuiteEntry("biased_boundary"),
    "biased_boundary-0.25": SuiteEntry("biased_boundary", {"bias": 0.25}),
    "biased_boundary-robust": ROBUST_BIASED,
    "biased_boundary-adaptive": TRANSFER_BIASED.kwargs["refine"],
    "transfer": SuiteEntry("transfer"),
    "transfer-lines-only": SuiteEntry("transfer", {"refine": None}),
    "transfer-biased": SuiteEntry("transfer", {"refine": SuiteEntry("biased_boundary")}),
    "transfer-biased-robust": SuiteEntry("transfer", {"refine": ROBUST_BIASED}),
    "transfer-biased-adaptive": TRANSFER_BIASED,
    "transfer-cgba": TRANSFER_CGBA,
}


class CallCounter:
    """Counts model calls and images, so the bench reports the batch size a server would see."""

    def __init__(self, model: ArtifactModel) -> None:
        self.model, self.info, self.queries, self.calls = model, model.info, 0, 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.queries += len(images)
        return self.model(images)


def run_candidate(entry: SuiteEntry, surrogates: list[str], net: ArtifactModel, images: np.ndarray,
                  labels: np.ndarray, budget: int, seed: int) -> dict[str, Any]:
    """One attack alone on a fresh ledger: per-image distances, queries, wall time, images per model call."""
    counter = CallCounter(net)
    model = BudgetedModel(counter, images, labels, budget=budget)
    attack = build_attack(entry, surrogates)
    start = time.perf_counter()
    attack.run(model, np.arange(len(images)), np.random.default_rng(seed))
    return {"attack": repr(attack), "distances": model.best_l2.tolist(), "median": float(np.median(model.best_l2)),
            "mean": float(np.mean(model.best_l2)), "max_queries": int(model.used.max()),
            "wall_s": round(time.perf_counter() - start, 1),
            "images_per_call": round(counter.queries / counter.calls, 1)}


def best_suites(results: dict[str, dict[str, dict[str, Any]]], size: int, top: int = 3) -> list[tuple[float, tuple]]:
    """The ``top`` subsets of ``size`` candidates by the geometric mean over models of the suite's median."""
    labels = sorted(set.intersection(*(set(r) for r in results.values())))
    ranked = []
    for suite in itertools.combinations(labels, size):
        medians = [np.median(np.min([np.array(r[c]["distances"]) for c in suite], axis=0)) for r in results.values()]
        ranked.append((float(np.exp(np.mean(np.log(medians)))), suite, [round(float(m), 3) for m in medians]))
    return sorted(ranked)[:top]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--models", default="natural,trades",
                   help=f"comma-separated: any of {', '.join(MODELS)} (runs/ folders, docs/benchmarks.md), or "
                        f"NAME=ARTIFACT_DIR")
    p.add_argument("--data", type=Path, default=FASHION_MNIST_DIR,
                   help="Fashion-MNIST folder (IDX files), read at each model's shape (28x28x1 or the 64x64x3 proxy)")
    p.add_argument("--images", type=int, default=100, help="correctly classified test images per model")
    p.add_argument("--offset", type=int, default=5000,
                   help="first test image considered (bench/attack_bench.py reports on those from 0)")
    p.add_argument("--budget", type=int, default=1000, help="queries per image for each candidate")
    p.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated subset of the candidates")
    p.add_argument("--surrogates", default="",
                   help="comma-separated surrogate artifact folders for the candidates that craft on surrogates; each "
                        "model gets those of its input shape (none of its shape: those candidates are skipped for it)")
    p.add_argument("--seed", type=int, default=0, help="seed of every candidate's generator")
    p.add_argument("--json", type=Path, required=True, help="results (per-image distances); reused on a rerun")
    args = p.parse_args(argv)
    candidates = [c.strip() for c in args.candidates.split(",") if c.strip()]
    try:
        models = parse_models(args.models)
        if unknown := [c for c in candidates if c not in CANDIDATES]:
            raise ValueError(f"unknown candidate(s) {', '.join(unknown)}; choose from {', '.join(CANDIDATES)}")
        all_surrogates = [s for s in args.surrogates.split(",") if s]
        if missing := [s for s in all_surrogates if not (Path(s) / "manifest.json").is_file()]:
            raise ValueError(f"--surrogates: no model artifact at {', '.join(missing)}")
        shapes = {m: input_shape(path) for m, path in models.items()}
        data = {m: test_split(args.data, shape) for m, shape in shapes.items()}  # DatasetLayoutError is a ValueError
        surrogates = {m: fitting(all_surrogates, shape) for m, shape in shapes.items()}
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    results: dict[str, dict[str, Any]] = json.loads(args.json.read_text()) if args.json.is_file() else {}
    todo = [(m, c) for m in models for c in candidates if c not in results.get(m, {})
            and (surrogates[m] or not CANDIDATES[c].needs_surrogates)]
    nets = {m: ArtifactModel(models[m]) for m in dict.fromkeys(m for m, _ in todo)}
    picked = {m: first_correct(net, *data[m], args.offset, args.images) for m, net in nets.items()}
    for model_name, label in tqdm(todo, desc="candidates", file=sys.stderr):
        images, labels = (a[picked[model_name]] for a in data[model_name])
        results.setdefault(model_name, {})[label] = run_candidate(CANDIDATES[label], surrogates[model_name],
                                                                  nets[model_name], images, labels, args.budget,
                                                                  args.seed)
        atomic_write_text(args.json, json.dumps(results) + "\n")
    print(f"{'model':8} {'candidate':22} {'median':>7} {'mean':>7} {'wall_s':>7} {'img/call':>8}")
    for model_name in models:
        for label, r in results.get(model_name, {}).items():
            print(f"{model_name:8} {label:22} {r['median']:7.3f} {r['mean']:7.3f} {r['wall_s']:7.1f} "
                  f"{r['images_per_call']:8.1f}")
    measured = {m: results[m] for m in models if m in results}
    for size in range(1, 6):
        for score, suite, medians in best_suites(measured, size):
            print(f"best {size}: {score:.3f} (medians {' / '.join(map(str, medians))}) {', '.join(suite)}")
    label_of = {(e.name, repr(e.kwargs)): label for label, e in CANDIDATES.items()}
    for preset, entries in PRESETS.items():
        suite = [label_of.get((e.name, repr(e.kwargs))) for e in entries]
        if measured and all(c is not None and c in r for c in suite for r in measured.values()):
            medians = [float(np.median(np.min([r[c]["distances"] for c in suite], axis=0))) for r in measured.values()]
            print(f"preset {preset} ({', '.join(suite)}): medians {' / '.join(f'{m:.3f}' for m in medians)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
