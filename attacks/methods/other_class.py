"""Starting points from other evaluation images: blend toward the nearest images of another class.

A correctly classified image of another class is adversarial for this one by definition,
so the segment between them always crosses the boundary; bisecting it from the nearest
few such images gives a start that is usually much closer than noise (starting points
of this kind were handed out in the NIPS/NeurIPS adversarial vision challenges).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attacks.access.budgeted import BudgetedModel
from attacks.blocks.linesearch import bisect
from attacks.methods.base import Attack


@dataclass(frozen=True)
class OtherClassBlend(Attack):
    """Bisect toward each of the ``candidates`` nearest evaluation images with a different label.

    The pool is the images already checked and correctly classified, so check the whole
    evaluation set (:meth:`BudgetedModel.check_clean`) before attacking part of it.
    """

    candidates: int = 3

    def _run(self, model: BudgetedModel, ids: np.ndarray, rng: np.random.Generator) -> None:
        clean = model.clean(ids)
        pool = np.flatnonzero(model.checked & (model.best_l2 > 0))  # checked and classified as their own label
        if not len(pool):
            return
        others = model.clean(pool)
        dist = np.sqrt(np.maximum((clean ** 2).sum(1)[:, None] - 2 * clean @ others.T + (others ** 2).sum(1)[None], 0))
        dist[model.labels[ids][:, None] == model.labels[pool][None]] = np.inf
        order = np.argsort(dist, axis=1)[:, :self.candidates]
        for rank in range(order.shape[1]):
            rows = np.flatnonzero(np.isfinite(dist[np.arange(len(ids)), order[:, rank]]))
            rows = rows[model.remaining(ids[rows]) >= 1]
            target = others[order[rows, rank]]
            hit = model.is_adversarial(target, ids[rows])
            bisect(model, ids[rows[hit]], clean[rows[hit]], target[hit])
