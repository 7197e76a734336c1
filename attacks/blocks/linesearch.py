"""Line searches at uint8 resolution: bisection toward the clean image, and a geometric step along a direction."""
from __future__ import annotations

import numpy as np

from attacks.access.budgeted import BudgetedModel
from attacks.access.lattice import STEP, quantize


def bisect(model: BudgetedModel, ids: np.ndarray, clean: np.ndarray, adv: np.ndarray,
           lo: np.ndarray | None = None, tol: float = STEP) -> tuple[np.ndarray, np.ndarray]:
    """Points on the segment clean -> adv (rows), as close to clean as bisection finds, still adversarial.

    ``adv`` must be adversarial once quantized; ``lo`` (default 0) are fractions of the
    way already known not to be. A row stops once its interval is shorter than ``tol`` in
    L2, one uint8 step by default (lattice points are never closer; finer only finds the
    same images again), or its budget is spent. Returns the quantized boundary points and
    their fraction ``t`` of the way from clean to adv.
    """
    diff = adv - clean
    scale = np.linalg.norm(diff, axis=1)
    lo = np.zeros(len(ids)) if lo is None else np.array(lo, dtype=np.float64)
    hi = np.ones(len(ids))
    while True:
        rows = np.flatnonzero((hi - lo) * scale > tol)
        rows = rows[model.remaining(ids[rows]) >= 1]
        if not len(rows):
            break
        mid = (lo[rows] + hi[rows]) / 2
        is_adv = model.is_adversarial(quantize(clean[rows] + mid[:, None].astype(np.float32) * diff[rows]), ids[rows])
        hi[rows[is_adv]] = mid[is_adv]
        lo[rows[~is_adv]] = mid[~is_adv]
    return quantize(clean + hi[:, None].astype(np.float32) * diff), hi


def jump(model: BudgetedModel, ids: np.ndarray, points: np.ndarray, direction: np.ndarray,
         step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step from ``points`` along unit ``direction`` rows, halving each ``step`` until adversarial (HSJA's
    geometric progression); a row whose step rounds away or whose budget is spent stays put.

    Returns the new points and which rows moved.
    """
    out = points.copy()
    step = step.astype(np.float32)
    pending = np.ones(len(ids), dtype=bool)
    moved = np.zeros(len(ids), dtype=bool)
    largest = np.abs(direction).max(axis=1)
    while True:
        pending &= step * largest >= STEP / 2
        rows = np.flatnonzero(pending)
        rows = rows[model.remaining(ids[rows]) >= 1]
        if not len(rows):
            return out, moved
        candidates = quantize(points[rows] + step[rows, None] * direction[rows])
        is_adv = model.is_adversarial(candidates, ids[rows])
        out[rows[is_adv]] = candidates[is_adv]
        moved[rows[is_adv]] = True
        pending[rows[is_adv]] = False
        step[rows[~is_adv]] /= 2
