"""Line searches at uint8 resolution: bisection toward the clean image, and halving steps along a direction or to a
tangent point until adversarial."""
from __future__ import annotations

from collections.abc import Callable

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
    return halving_search(model, ids, points, step, lambda rows, size: points[rows] + size[:, None] * direction[rows])


def tangent_jump(model: BudgetedModel, ids: np.ndarray, clean: np.ndarray, points: np.ndarray, normal: np.ndarray,
                 radius: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move each boundary point to the tangent point of :func:`tangent_points` from ``clean`` on the hemisphere of
    ``radius`` around it, halving each radius until adversarial (Tangent Attack's progression, HSJA's jump
    otherwise); a row whose move rounds away or whose budget is spent stays put.

    Returns the new points and which rows moved.
    """
    return halving_search(model, ids, points, radius,
                          lambda rows, size: tangent_points(clean[rows], points[rows], normal[rows], size))


def tangent_points(clean: np.ndarray, centre: np.ndarray, normal: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Per row, where the line from ``clean`` touches the hemisphere of ``radius`` around ``centre`` on the side
    unit ``normal`` points to, in the 2-D plane of ``clean - centre`` and ``normal``: the point of that hemisphere
    whose ray from ``clean`` leaves it nearest ``clean`` (Ma et al., "Finding Optimal Tangent Points for Reducing
    Distortions of Hard-label Attacks", NeurIPS 2021). A radius of at least ``|clean - centre|`` gives ``clean``.
    """
    out = clean.astype(np.float64) - centre
    dist = np.linalg.norm(out, axis=1)
    height = np.einsum("ij,ij->i", out, normal)
    across = out - height[:, None] * normal
    across /= np.maximum(np.linalg.norm(across, axis=1, keepdims=True), 1e-12)
    sin_a = np.clip(-height / np.maximum(dist, 1e-12), -1.0, 1.0)  # clean's angle below the tangent plane
    cos_a = np.sqrt(1.0 - sin_a ** 2)
    cos_b = np.clip(radius / np.maximum(dist, 1e-12), 0.0, 1.0)  # the tangent's angle at clean, seen from centre
    sin_b = np.sqrt(1.0 - cos_b ** 2)
    sin_g, cos_g = sin_b * cos_a - cos_b * sin_a, cos_b * cos_a + sin_b * sin_a
    point = centre + (radius * cos_g)[:, None] * across + (radius * sin_g)[:, None] * normal
    return point.astype(np.float32)


def halving_search(model: BudgetedModel, ids: np.ndarray, points: np.ndarray, step: np.ndarray,
                   propose: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Move each row of ``points`` to ``propose(rows, step)`` (unquantized candidates for those rows), halving its
    step until the quantized candidate is adversarial; a row whose move is under half a uint8 step in every pixel,
    or whose budget is spent, stays put. Returns the new points and which rows moved.
    """
    out = points.copy()
    step = np.asarray(step, dtype=np.float32).copy()
    pending = np.ones(len(ids), dtype=bool)
    moved = np.zeros(len(ids), dtype=bool)
    while True:
        rows = np.flatnonzero(pending)
        rows = rows[model.remaining(ids[rows]) >= 1]
        if not len(rows):
            return out, moved
        candidates = propose(rows, step[rows])
        small = np.abs(candidates - points[rows]).max(axis=1) < STEP / 2
        pending[rows[small]] = False
        rows, candidates = rows[~small], quantize(candidates[~small])
        if not len(rows):
            continue
        is_adv = model.is_adversarial(candidates, ids[rows])
        out[rows[is_adv]] = candidates[is_adv]
        moved[rows[is_adv]] = True
        pending[rows[is_adv]] = False
        step[rows[~is_adv]] /= 2
