"""Triangle Attack (Wang, Yin, Zhang, Shi & Xie, "Triangle Attack: A Query-efficient Decision-based Adversarial
Attack", ECCV 2022), untargeted L2.

No estimate of the boundary's normal at all: each iteration draws one random low-frequency direction ``v`` across the
current perturbation ``a - x`` (``a`` the closest adversarial so far, ``x`` the clean image) and tries, in the plane
of the two, the third corner ``n`` of a triangle ``x, a, n`` with angle ``theta`` at ``x`` and angle ``alpha`` at
``n``. By the law of sines ``|n - x| = |a - x| sin(alpha + theta) / sin(alpha)``, smaller than ``|a - x|`` whenever
``theta > pi - 2 alpha``; with ``alpha = pi / 2`` the corners lie on CGBA's semicircle (Thales), with ``alpha``
above it on a flatter arc that shrinks the perturbation more per angle. So one query asks whether a point known to
be closer is still adversarial, and most iterations cost two to four queries instead of the dozens an estimate of
the normal takes: the attack is made for small budgets.

Per image, as in the paper: try ``theta = max(pi - 2 alpha, 0) + min(pi / 16, alpha / 2)`` on one side of the
plane, then on the other; after a hit, up to ``search_steps`` bisections of ``theta`` toward ``pi - alpha`` (where
``n`` reaches ``x``), each trying both sides, and the first further hit ends the iteration. ``alpha`` learns the
boundary's shape: up by ``alpha_up`` after an iteration that moved, down by ``alpha_down`` after each miss, within
``pi / 2 +- alpha_range``. Changes: the directions are Gaussian in the lowest ``freq`` of the DCT frequencies
(:func:`attacks.blocks.directions.sample_directions`, as GeoDA and CGBA here) rather than the paper's sparse
random frequency masks with learned sampling probabilities, the start is bisected to the boundary first (the paper
starts wherever its noise search ended), and every point is rounded to the uint8 lattice before it is sent.

Measured here (docs/benchmarks.md "Tangent and Triangle Attacks"): at 200 queries per image it beat GeoDA and HSJA
on the Fashion-MNIST models but not CGBA, and at 1000 it was 13 to 67% farther than CGBA per image, so it is in no
preset. Its model calls are small (two to four queries per image per iteration).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attacks.access.budgeted import BudgetedModel
from attacks.access.lattice import quantize
from attacks.blocks.directions import sample_directions
from attacks.blocks.linesearch import bisect
from attacks.methods.base import Attack, with_starts
from attacks.methods.cgba import Semicircle
from attacks.methods.starts import STARTS


@dataclass(frozen=True)
class TriangleAttack(Attack):
    """``freq``: share of each axis's DCT frequencies the directions are drawn from; ``search_steps``: bisections of
    the angle after a first hit (the paper's 2); ``alpha_up`` / ``alpha_down`` / ``alpha_range``: how the angle at
    the new corner learns, as in the paper (0.01, 0.0005, 0.1)."""

    freq: float = 0.25
    search_steps: int = 2
    alpha_up: float = 0.01
    alpha_down: float = 0.0005
    alpha_range: float = 0.1
    init: tuple[Attack, ...] = STARTS

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.freq <= 1:
            raise ValueError(f"freq must be in (0, 1], got {self.freq}")
        if not 0 <= self.alpha_range < np.pi / 2:
            raise ValueError(f"alpha_range must be in [0, pi/2), got {self.alpha_range}")

    def _run(self, model: BudgetedModel, ids: np.ndarray, rng: np.random.Generator) -> None:
        ids = with_starts(model, ids, rng, self.init)
        clean = model.clean(ids)
        adv, _ = bisect(model, ids, clean, model.starts(ids))
        alpha = np.full(len(ids), np.pi / 2)
        shape = model.images.shape[1:]
        while True:
            rows = np.flatnonzero(model.remaining(ids) >= 1)
            if not len(rows):
                return
            plane = Triangles(clean[rows], adv[rows], sample_directions(rng, len(rows), shape, self.freq))
            adv[rows], alpha[rows] = self._iteration(model, ids[rows], plane, alpha[rows])

    def _iteration(self, model: BudgetedModel, ids: np.ndarray, plane: Triangles,
                   alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One iteration for every row; returns the rows' closest adversarials and their new ``alpha``."""
        points, side = plane.boundary.copy(), np.ones(len(ids))
        theta = first_angle(alpha)
        hit = self._both_sides(model, ids, plane, points, alpha, side, np.arange(len(ids)), theta)
        left, right = theta, np.pi - alpha
        searching = hit.copy()
        for _ in range(self.search_steps):
            rows = np.flatnonzero(searching)
            if not len(rows):
                break
            mid = (left[rows] + right[rows]) / 2
            found = self._both_sides(model, ids, plane, points, alpha, side, rows, mid)
            searching[rows[found]] = False
            missed = rows[~found]
            left[missed], right[missed] = first_angle(alpha[missed]), mid[~found]
        alpha[hit] = np.minimum(alpha[hit] + self.alpha_up, np.pi / 2 + self.alpha_range)
        return points, alpha

    def _both_sides(self, model: BudgetedModel, ids: np.ndarray, plane: Triangles, points: np.ndarray,
                    alpha: np.ndarray, side: np.ndarray, rows: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """For ``rows``, try the corner at ``theta`` on each row's ``side``, then, after a miss, on the other side;
        returns which of ``rows`` hit. Updates ``points`` (hits), ``side`` and ``alpha`` (down after each miss)."""
        theta = theta.copy()
        hit = np.zeros(len(rows), dtype=bool)
        for attempt in range(2):
            todo = np.flatnonzero(~hit)
            todo = todo[model.remaining(ids[rows[todo]]) >= 1]
            if not len(todo):
                break
            at = rows[todo]
            if attempt:
                side[at] = -side[at]
                theta[todo] = np.maximum(theta[todo], np.pi - 2 * alpha[at] + np.pi / 64)
            candidates = quantize(plane.corner(at, alpha[at], theta[todo], side[at]))
            found = model.is_adversarial(candidates, ids[at])
            points[at[found]] = candidates[found]
            hit[todo[found]] = True
            alpha[at[~found]] = np.maximum(alpha[at[~found]] - self.alpha_down, np.pi / 2 - self.alpha_range)
        return hit


def first_angle(alpha: np.ndarray) -> np.ndarray:
    """The paper's first angle at ``x``: just past ``pi - 2 alpha``, where the corner starts to be closer than ``a``."""
    return np.maximum(np.pi - 2 * alpha, 0) + np.minimum(np.pi / 16, alpha / 2)


class Triangles(Semicircle):
    """Per row, CGBA's plane through the clean image ``x`` spanned by ``a - x`` (``a`` in ``boundary``, the closest
    adversarial so far) and a direction across it, with the triangle's corners besides the semicircle's points."""

    def corner(self, rows: np.ndarray, alpha: np.ndarray, theta: np.ndarray, side: np.ndarray) -> np.ndarray:
        """The third corners for ``rows``: angle ``theta`` at ``x`` on ``side`` (+-1) of ``a - x``, ``alpha`` at
        the corner, so ``|a - x| sin(alpha + theta) / sin(alpha)`` from ``x``."""
        length = self.radius[rows] * np.sin(alpha + theta) / np.sin(alpha)
        direction = np.cos(theta)[:, None] * self.along[rows] + (side * np.sin(theta))[:, None] * self.across[rows]
        return (self.clean[rows] + length[:, None] * direction).astype(np.float32)
