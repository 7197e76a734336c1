"""How many surrogates the transfer attack needs: its lines and the surrogates' gradient agreement by ensemble size.

For ensembles of the first ``k`` of ``--surrogates`` (``k`` in ``--sizes``), on the first
``--images`` test images the target classifies correctly (from ``--offset``):

- lines: the transfer attack's candidate lines alone (``TransferAttack(refine=None)``,
  ``--budget`` label queries per image), median verified L2; at the largest size also with
  its default GeoDA refinement, i.e. the suite's transfer member;
- agreement: at each image's white-box FMN boundary point of the target, the cosine between
  the target's logit-margin gradient (toward the class it answers there) and the
  ensemble's, median over images;
- the ceiling: the same cosine between the ensembles of the two disjoint halves of the
  surrogates. If each model's gradient is a direction shared by the recipe plus noise of its
  own seed, of equal size in every model, that cosine gives the shared part's share ``s2``
  of a gradient's squared length, and an ensemble of infinitely many surrogates agrees with
  the target at cosine ``sqrt(s2)``: the seed's own part of the target's gradient is beyond
  any number of surrogates and must come from label queries.

    for s in 1 2 3 4 5 6 7 8; do
      python training/train_tiny.py --recipe fmnist-cpu --loss natural --seed $s \\
          --output-dir runs/fmnist-surrogate-natural8-s$s
    done
    S=$(printf 'runs/fmnist-surrogate-natural8-s%s/artifact,' 1 2 3 4 5 6 7 8)
    python bench/surrogates.py --surrogates ${S%,} --json runs/bench-surrogates.json

Ends with one ``name: value`` line per figure. Exit codes: 0 done, 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from attacks import ArtifactModel, BudgetedModel, TransferAttack
from attacks.scoring.evaldata import first_correct
from attacks.whitebox.reference import fmn_l2
from attacks.whitebox.surrogate import Ensemble, load_ensemble, margin
from avc_common.atomic import atomic_write_text
from avc_common.cli import HelpFormatter
from avc_common.data.fashion_mnist import FASHION_MNIST_DIR, load_fashion_split
from avc_common.tensors import to_model_input

ROOT = Path(__file__).resolve().parent.parent


def transfer_lines(target: ArtifactModel, images: np.ndarray, labels: np.ndarray, surrogates: list[str], budget: int,
                   seed: int, refine: bool) -> dict[str, float]:
    """The transfer attack on ``surrogates``, lines only or with its default refinement: median, mean, queries."""
    model = BudgetedModel(target, images, labels, budget=budget)
    attack = TransferAttack(surrogates=tuple(surrogates), **({} if refine else {"refine": None}))
    start = time.perf_counter()
    attack.run(model, np.arange(len(images)), np.random.default_rng(seed))
    return {"median": float(np.median(model.best_l2)), "mean": float(np.mean(model.best_l2)),
            "median_queries": float(np.median(model.used)), "max_queries": int(model.used.max()),
            "seconds": round(time.perf_counter() - start, 1)}


def boundary_points(target: ArtifactModel, images: np.ndarray, labels: np.ndarray,
                    steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The target's FMN adversarials (float, just past its boundary), the class it answers there, and which rows
    FMN fooled."""
    x = to_model_input(images)
    y = torch.from_numpy(labels.astype(np.int64))
    adv = fmn_l2(target.net, x, y, steps=steps, alpha_init=0.1)
    with torch.no_grad():
        answer = target.net(adv).argmax(dim=1)
    return adv, answer, answer != y


def margin_gradient(loss: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor) -> torch.Tensor:
    """Rows of d loss / d input at ``points``, flattened."""
    with torch.enable_grad():
        x = points.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss(x).sum(), x)
    return grad.flatten(1)


def median_cosine(a: torch.Tensor, b: torch.Tensor, rows: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=1)[rows].median())


def ceiling(halves_cosine: float, half: int) -> float:
    """The cosine an infinite ensemble would reach with a target like its members, from the cosine between two
    disjoint ``half``-model ensembles: shared share s2 = (c / m) / (1 - c + c / m), ceiling sqrt(s2) (0 when the
    halves disagree, c <= 0: nothing is shared)."""
    c = halves_cosine
    return math.sqrt(max((c / half) / (1 - c + c / half), 0.0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "runs/fmnist-natural/artifact", help="the target's artifact")
    p.add_argument("--surrogates", required=True,
                   help="comma-separated surrogate artifact folders, in the order ensembles take them (at least 2)")
    p.add_argument("--sizes", default="1,2,4,8", help="ensemble sizes (the first k surrogates), at most their number")
    p.add_argument("--data", type=Path, default=FASHION_MNIST_DIR, help="Fashion-MNIST folder (IDX files)")
    p.add_argument("--images", type=int, default=100, help="correctly classified test images")
    p.add_argument("--offset", type=int, default=0, help="first test image considered")
    p.add_argument("--budget", type=int, default=1000, help="label queries per image")
    p.add_argument("--fmn-steps", type=int, default=500, help="FMN steps to the target's boundary points")
    p.add_argument("--seed", type=int, default=0, help="seed of the attacks' generator")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", type=Path, default=None, help="also write every figure here")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    surrogates = [s.strip() for s in args.surrogates.split(",") if s.strip()]
    try:
        sizes = sorted({int(k) for k in args.sizes.split(",") if k.strip()})
        if len(surrogates) < 2 or not sizes or sizes[0] < 1 or sizes[-1] > len(surrogates):
            raise ValueError(f"need at least 2 surrogates and sizes from 1 to their number ({len(surrogates)}); "
                             f"got sizes {args.sizes!r}")
        if missing := [s for s in [str(args.model), *surrogates] if not (Path(s) / "manifest.json").is_file()]:
            raise ValueError(f"no model artifact at {', '.join(missing)}")
        target = ArtifactModel(args.model)
        images, labels = load_fashion_split(args.data, "test")
        picked = first_correct(target, images, labels, args.offset, args.images)
    except ValueError as err:  # DatasetLayoutError is one
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    x, y = images[picked], labels[picked]
    shape, classes = target.info.shape, target.info.num_classes

    runs = [(k, False) for k in sizes] + [(sizes[-1], True)]
    found = {run: transfer_lines(target, x, y, surrogates[:run[0]], args.budget, args.seed, refine=run[1])
             for run in tqdm(runs, desc="transfer runs", file=sys.stderr)}
    lines, refined = {k: found[k, False] for k in sizes}, found[sizes[-1], True]

    adv, answer, fooled = boundary_points(target, x, y, args.fmn_steps)
    yt = torch.from_numpy(y.astype(np.int64))

    @cache  # the first k, the singles and the halves overlap
    def gradient(paths: tuple[str, ...]) -> torch.Tensor:
        ensemble: Ensemble = load_ensemble(paths, shape, classes)
        return margin_gradient(lambda a: ensemble.loss(a, yt, answer), adv)

    target_grad = margin_gradient(lambda a: margin(target.net(a), yt, answer), adv)
    paths = tuple(surrogates)
    agreement = {k: median_cosine(gradient(paths[:k]), target_grad, fooled) for k in sizes}
    singles = [median_cosine(gradient((p,)), target_grad, fooled) for p in paths]
    half = len(paths) // 2
    halves = median_cosine(gradient(paths[:half]), gradient(paths[half:2 * half]), fooled)
    top = ceiling(halves, half)

    print(f"\nTarget {args.model}; {len(x)} test images from index {args.offset} (first correctly classified); "
          f"{args.budget} queries per image; seed {args.seed}; {torch.get_num_threads()} torch thread(s)")
    print("| surrogates | lines median | lines mean | median queries | agreement with the target | seconds |")
    print("|---|---|---|---|---|---|")
    for k in sizes:
        r = lines[k]
        print(f"| {k} | {r['median']:.4f} | {r['mean']:.4f} | {r['median_queries']:.0f} | {agreement[k]:.3f} | "
              f"{r['seconds']:.0f} |")
    print(f"\nsingle surrogates' agreement: {', '.join(f'{c:.3f}' for c in singles)}; two disjoint {half}-model "
          f"ensembles: {halves:.3f}; {int(fooled.sum())} of {len(x)} images on the target's FMN boundary")
    k = sizes[-1]
    figures = {f"lines median k={k}": lines[k]["median"], f"transfer (lines + GeoDA) median k={k}": refined["median"],
               f"agreement k={k}": agreement[k], "agreement ceiling (infinite ensemble)": top}
    if args.json:
        atomic_write_text(args.json, json.dumps({
            "command": shlex.join(["python", "bench/surrogates.py", *argv]), "model": str(args.model),
            "surrogates": surrogates, "test_indices": picked.tolist(), "lines": lines, "refined": refined,
            "agreement": agreement, "single_agreement": singles, "halves_cosine": halves,
            "figures": figures}, indent=2) + "\n")
    print()
    for name, value in figures.items():
        print(f"{name}: {value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
