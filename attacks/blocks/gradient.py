"""Monte-Carlo estimate of the boundary's normal from label-only probes (HSJA, Chen et al. 2020, eq. 9-10).

Probes are drawn around each boundary point, sent as uint8, and their signs (adversarial
or not), minus their mean (the paper's baseline), weight the perturbation that was
*actually sent* after rounding and clipping, so rounding changes the probes the estimate
uses rather than biasing it.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from attacks.access.budgeted import BudgetedModel
from attacks.access.lattice import quantize
from attacks.blocks.directions import low_frequency_dims, sample_directions

# (image ids, their boundary points, this iteration's sum of signed probes, how many) -> a vector to add to that sum
Guide = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray | float]


def no_guide(ids: np.ndarray, points: np.ndarray, probes: np.ndarray, evals: np.ndarray) -> float:
    """The :data:`Guide` of an attack without priors: nothing to add."""
    return 0.0


def probe_weight(shape: tuple[int, int, int], freq: float) -> float:
    """What one sign probe adds along the true normal, on average, to the estimate's sum: E|<u, n>| = sqrt(2 / (pi d))
    for unit probes ``u`` in the ``d`` sampled dimensions, so a prior of weight W counts as much as W probes."""
    return float(np.sqrt(2 / (np.pi * low_frequency_dims(shape, freq))))


def estimate_normal(model: BudgetedModel, ids: np.ndarray, points: np.ndarray, delta: np.ndarray,
                    evals: np.ndarray, rng: np.random.Generator, freq: float = 1.0,
                    probe_rows: int = 2048) -> np.ndarray:
    """Mean of sign * probe / delta per image (rows, not normalised): ``evals[i]`` probes of L2 size ``delta[i]``.

    ``points`` should lie on the lattice (quantized). Images are sent in chunks of at
    most ``probe_rows`` probes (or one whole image) to bound memory.
    """
    shape = model.images.shape[1:]
    grad = np.zeros_like(points)
    ends = np.cumsum(evals)
    first = 0
    while first < len(ids):
        last = max(first + 1, int(np.searchsorted(ends, ends[first] - evals[first] + probe_rows, "right")))
        owner = np.repeat(np.arange(first, last), evals[first:last])
        probes = quantize(points[owner] + delta[owner, None] * sample_directions(rng, len(owner), shape, freq))
        sign = np.where(model.is_adversarial(probes, ids[owner]), 1.0, -1.0)
        mean = np.bincount(owner - first, sign)[owner - first] / evals[owner]
        sign = np.where(np.abs(mean) == 1, sign, sign - mean).astype(np.float32)
        sent = (probes - points[owner]) / delta[owner, None]
        starts = np.r_[0, np.cumsum(evals[first:last])[:-1]]
        grad[first:last] = np.add.reduceat(sign[:, None] * sent, starts, axis=0) / evals[first:last, None]
        first = last
    return grad
