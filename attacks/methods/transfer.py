"""Transfer attack from local surrogates, then a decision-based refinement (the NeurIPS 2018 AVC recipe).

The strongest untargeted attacks of the NeurIPS 2018 Adversarial Vision Challenge (e.g.
Brunner et al., "Guessing Smart: Biased Sampling for Efficient Black-Box Adversarial
Attacks", ICCV 2019) started from perturbations crafted on surrogate models they owned,
one of them adversarially trained, walked back to the target's boundary with label
queries, and spent the rest refining with a boundary-type attack. Here:

1. PGD and momentum-iterative (MI-FGSM) L2 attacks on the surrogate ensemble, for each
   radius in ``radii``: one candidate direction per (radius, momentum), all images at once.
   When the surrogates mix natural and adversarially trained models, the ensemble weights
   the two kinds equally, and each kind's own ensemble crafts candidates too
   (:func:`attacks.whitebox.surrogate.ensembles_by_kind`).
2. Then targeted MI-FGSM on the first (whole) ensemble toward each image's ``targets`` likeliest
   other classes under it, within the image's best distance so far (the largest radius if no line
   fooled it): the surrogates' nearest class is often not the target's, and a line toward the
   right one is shorter (Fashion-MNIST CNNs: docs/history/2026-11-experiments.md
   "Targeted lines (kept), and what limits the refinement").
3. Each candidate is a line from the clean image. The target is asked one question per
   line, at the current best distance along it (the full candidate while there is
   none): a line that is not adversarial there cannot improve on the best and costs
   nothing more; one that is gets bisected to the boundary (:func:`attacks.blocks.linesearch.bisect`).
4. ``refine`` continues from the best point with the remaining queries; images no line
   fooled get its usual starting-point search. The default, GeoDA with a ``prior``, starts
   its normal estimate from the best line's direction instead of discarding it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from attacks.access.budgeted import BudgetedModel
from attacks.access.lattice import STEP, quantize
from attacks.blocks.linesearch import bisect
from attacks.methods.base import Attack
from attacks.methods.geoda import GeoDA
from attacks.whitebox.surrogate import COMBINE, Ensemble, ensembles_by_kind, pgd_l2, to_rows, to_tensor


@dataclass(frozen=True)
class TransferAttack(Attack):
    """``surrogates``: artifact folders (loaded on first use, once per process); ``steps`` per candidate;
    ``momenta``: 0 is PGD, > 0 MI-FGSM; ``targets``: how many of each image's likeliest other classes get a
    targeted line (0: none; it runs with the largest momentum); ``combine``: average the surrogates' ``"logits"`` or
    ``"loss"``; ``refine``: the decision-based attack that spends the remaining queries (None: stop after the lines);
    ``device``: where the surrogate gradients run (a name or a ``torch.device``; left out of ``repr`` and equality,
    since a run resumed on another device is the same run)."""

    surrogates: tuple[str, ...] = ()
    radii: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    steps: int = 20
    momenta: tuple[float, ...] = (0.0, 0.9)
    targets: int = 9
    combine: str = "logits"
    refine: Attack | None = GeoDA(prior=500.0)
    device: str | torch.device = field(default="cpu", repr=False, compare=False)
    batch_size: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "device", torch.device(self.device))  # frozen; one type whatever the caller passed
        if not self.surrogates:
            raise ValueError("the transfer attack needs at least one surrogate artifact folder (surrogates=(...))")
        if self.combine not in COMBINE:
            raise ValueError(f"combine must be one of {COMBINE}, got {self.combine!r}")
        if self.targets < 0:
            raise ValueError(f"targets must be >= 0 (0: no targeted lines), got {self.targets}")

    def _run(self, model: BudgetedModel, ids: np.ndarray, rng: np.random.Generator) -> None:
        shape = model.images.shape[1:]
        ensembles = ensembles_by_kind(self.surrogates, shape, model.info.num_classes, self.combine, self.device)
        clean = model.clean(ids)
        x = to_tensor(clean, shape, self.device)
        labels = torch.from_numpy(model.labels[ids]).to(self.device)
        for ensemble in ensembles:
            for radius in sorted(self.radii):
                for momentum in self.momenta:
                    candidate = to_rows(pgd_l2(ensemble, x, labels, radius, self.steps, momentum, self.batch_size))
                    search_line(model, ids, clean, candidate)
        self._targeted_lines(model, ids, clean, x, labels, ensembles[0])
        if self.refine is not None:
            self.refine.run(model, ids, rng)


    def _targeted_lines(self, model: BudgetedModel, ids: np.ndarray, clean: np.ndarray, x: torch.Tensor,
                        labels: torch.Tensor, ensemble: Ensemble) -> None:
        """One line per image toward each of its ``targets`` likeliest other classes, within its best distance."""
        if not self.targets:
            return
        with torch.no_grad():
            scores = torch.cat([ensemble.logits(chunk) for chunk in x.split(self.batch_size)])
        likeliest = scores.scatter(1, labels[:, None], float("-inf")).topk(min(self.targets, scores.shape[1] - 1))
        radius = torch.from_numpy(np.minimum(model.best_l2[ids], max(self.radii)).astype(np.float32)).to(self.device)
        for targets in likeliest.indices.T:
            candidate = pgd_l2(ensemble, x, labels, radius, self.steps, max(self.momenta), self.batch_size, targets)
            search_line(model, ids, clean, to_rows(candidate))


def search_line(model: BudgetedModel, ids: np.ndarray, clean: np.ndarray, candidate: np.ndarray) -> None:
    """For each row, bisect clean -> candidate if it is adversarial no farther than the image's best so far.

    One query per row that could still improve (at the best distance along the line, or
    the candidate itself while the image has no adversarial), then bisection on hits.
    """
    diff = candidate - clean
    radius = np.linalg.norm(diff, axis=1)
    scale = np.minimum(1.0, model.best_l2[ids] / np.maximum(radius, 1e-12))
    rows = np.flatnonzero(scale * radius > STEP)
    rows = rows[model.remaining(ids[rows]) >= 1]
    if not len(rows):
        return
    points = quantize(clean[rows] + scale[rows, None].astype(np.float32) * diff[rows])
    hit = model.is_adversarial(points, ids[rows])
    bisect(model, ids[rows[hit]], clean[rows[hit]], points[hit])
