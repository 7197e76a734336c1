"""CGBA (Reza, Rahmati, Wu & Dai, "CGBA: Curvature-aware Geometric Black-box Attack", ICCV 2023), untargeted L2.

GeoDA's successor from the same group. Each iteration estimates the boundary's normal at the
current boundary point ``b`` from label-only probes (:mod:`attacks.blocks.gradient`, low DCT
frequencies as in GeoDA), then searches the 2-D plane through the clean image ``x`` spanned by
``b - x`` and that estimate, along the semicircle whose diameter is ``x -> b``. Every point of
that semicircle is no farther from ``x`` than ``b``, and where the boundary is flat the closest
boundary point of the plane lies on it (Thales): seen from ``x`` at angle ``phi`` from ``b - x``,
the semicircle's point is at distance ``|b - x| cos(phi)``, so a larger angle that is still
adversarial is a smaller perturbation. Unlike a search along a ray from ``x`` (GeoDA), the
semicircle always starts from a known adversarial, ``b`` at ``phi = 0``, so it finds a boundary
point however curved the boundary is, and an iteration never moves farther away.

Two searches along the semicircle, as in the paper (``variant``):

- ``"cgba"`` (the default): step out from ``b`` to the angles pi/4, 3pi/8, ... (halving the way
  left to pi/2, where the semicircle reaches ``x``) until a point is not adversarial, then bisect
  the angle between the last adversarial and that point. It lands on the boundary where the
  plane meets it; the paper's choice where the boundary is nearly flat, as untargeted
  boundaries near the data are.
- ``"cgba_h"``: start at half the angle ``theta`` between ``b - x`` and the estimate, halve it until
  adversarial, then bisect from ``x`` along the ray through that point. The paper's variant for
  strongly curved boundaries (its targeted attacks): it trusts the estimate less, and the final
  ray search still reaches the boundary where the semicircle's point lies deep inside the
  adversarial region. Untargeted, on linear models, random CNNs and a Fashion-MNIST CNN, it
  found larger median distances than ``"cgba"`` in all but one of the comparisons made (a tie
  within noise), hence the default.

Changes for a uint8 model, as in :mod:`attacks.methods.geoda`: probes are ``min_probe`` uint8
levels RMS per pixel (the paper's sigma = 2e-4 rounds away), the estimate uses the probes as
sent, and every search stops at one uint8 step (L2) instead of the paper's tol. The angular
bisection of ``"cgba"`` starts from the last angle found adversarial on the way out, not from
``phi = 0`` as the paper's does: that point's answer is already known, so the bracket is narrower
for nothing. A search that finds no better point (the estimate was no help) keeps ``b`` for the
next iteration, which probes it again with more queries.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from attacks.access.budgeted import BudgetedModel
from attacks.access.lattice import STEP, quantize
from attacks.blocks.directions import unit_rows
from attacks.blocks.gradient import Guide, estimate_normal, no_guide
from attacks.blocks.linesearch import bisect
from attacks.methods.base import Attack, with_starts
from attacks.methods.starts import STARTS

VARIANTS = ("cgba", "cgba_h")


@dataclass(frozen=True)
class CGBA(Attack):
    """``variant``: the semicircle search, ``"cgba"`` or ``"cgba_h"`` (module docstring); ``first_probes``: probes
    of the first iteration, growing with sqrt(iteration) as in the paper; ``min_probe``: probe size in uint8 levels
    RMS per pixel; ``freq``: the share of each axis's DCT frequencies probes are drawn from, 1 / the paper's
    dimension-reduction factor of 4 (on Fashion-MNIST CNNs, 0.25 beat GeoDA's 0.5 in most comparisons; a model with
    no low-frequency bias, such as an untrained net, wants 1); ``reserve``: queries kept per iteration for the
    search."""

    variant: str = "cgba"
    first_probes: int = 30
    min_probe: float = 2.0
    freq: float = 0.25
    reserve: int = 12
    probe_rows: int = 2048
    init: tuple[Attack, ...] = STARTS

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise ValueError(f"CGBA variant={self.variant!r} is not one of {VARIANTS}; pick 'cgba' for the paper's "
                             f"semicircular bisection or 'cgba_h' for its angle-halving search")

    def _run(self, model: BudgetedModel, ids: np.ndarray, rng: np.random.Generator) -> None:
        guide = self._guide(model)
        ids = with_starts(model, ids, rng, self.init)
        clean = model.clean(ids)
        boundary, _ = bisect(model, ids, clean, model.starts(ids))
        delta = np.full(len(ids), self.min_probe * np.sqrt(model.dim) * STEP, dtype=np.float32)
        search = self._bisect_arc if self.variant == "cgba" else self._halve_angle
        for t in itertools.count(1):
            evals = np.minimum(int(self.first_probes * np.sqrt(t)), model.remaining(ids) - self.reserve)
            rows = np.flatnonzero(evals >= 2)
            if not len(rows):
                return
            normal = estimate_normal(model, ids[rows], boundary[rows], delta[rows], evals[rows], rng, self.freq,
                                     self.probe_rows)
            # The guide adds to the sum of the probes; to their mean, 1/evals of it (0 leaves the floats as they were)
            bias = np.asarray(guide(ids[rows], boundary[rows], evals[rows, None] * normal, evals[rows]), np.float32)
            normal = normal + bias / evals[rows, None].astype(np.float32)
            boundary[rows] = search(model, ids[rows], Semicircle(clean[rows], boundary[rows], normal))

    def _guide(self, model: BudgetedModel) -> Guide:
        """What each iteration adds to the sum of its signed probes before the search: nothing here (surrogate priors
        in :class:`attacks.methods.prior_cgba.PriorCGBA`)."""
        return no_guide

    def _halve_angle(self, model: BudgetedModel, ids: np.ndarray, arc: Semicircle) -> np.ndarray:
        """CGBA-H: the first adversarial of the angles theta/2, theta/4, ..., then bisection along its ray."""
        phi = arc.theta / 2
        points = arc.boundary.copy()
        found = np.zeros(len(ids), dtype=bool)
        pending = np.ones(len(ids), dtype=bool)
        while True:
            pending &= arc.chord(0, phi) >= STEP  # closer to b than a uint8 step: nothing left to gain
            rows = np.flatnonzero(pending)
            rows = rows[model.remaining(ids[rows]) >= 1]
            if not len(rows):
                break
            candidates = quantize(arc.point(rows, phi[rows]))
            hit = model.is_adversarial(candidates, ids[rows])
            points[rows[hit]] = candidates[hit]
            found[rows[hit]] = True
            pending[rows[hit]] = False
            phi[rows[~hit]] /= 2
        rows = np.flatnonzero(found)
        points[rows], _ = bisect(model, ids[rows], arc.clean[rows], points[rows])
        return points

    def _bisect_arc(self, model: BudgetedModel, ids: np.ndarray, arc: Semicircle) -> np.ndarray:
        """CGBA: out along the semicircle to the first angle not adversarial, then bisect the angle."""
        inside = np.zeros(len(ids))  # largest angle known adversarial (0: the boundary point itself)
        outside = np.full(len(ids), np.pi / 4)  # the next angle to try on the way out
        points = arc.boundary.copy()
        out = np.zeros(len(ids), dtype=bool)  # whether ``outside`` is known not to be adversarial
        while True:
            # Within a uint8 step of the clean image the point is the clean image, known not adversarial.
            out |= arc.radius * np.cos(outside) < STEP
            rows = np.flatnonzero(~out)
            rows = rows[model.remaining(ids[rows]) >= 1]
            if not len(rows):
                break
            candidates = quantize(arc.point(rows, outside[rows]))
            hit = model.is_adversarial(candidates, ids[rows])
            points[rows[hit]] = candidates[hit]
            inside[rows[hit]] = outside[rows[hit]]
            outside[rows[hit]] = (outside[rows[hit]] + np.pi / 2) / 2
            out[rows[~hit]] = True
        while True:
            rows = np.flatnonzero(out & (arc.chord(inside, outside) > STEP))
            rows = rows[model.remaining(ids[rows]) >= 1]
            if not len(rows):
                return points
            mid = (inside[rows] + outside[rows]) / 2
            candidates = quantize(arc.point(rows, mid))
            hit = model.is_adversarial(candidates, ids[rows])
            points[rows[hit]] = candidates[hit]
            inside[rows[hit]] = mid[hit]
            outside[rows[~hit]] = mid[~hit]


class Semicircle:
    """Per row, the semicircle on the diameter ``clean -> boundary`` in the plane spanned by ``boundary - clean`` and
    ``normal``, bent toward ``normal``; angles are seen from ``clean`` and measured from ``boundary - clean``."""

    def __init__(self, clean: np.ndarray, boundary: np.ndarray, normal: np.ndarray) -> None:
        self.clean, self.boundary = clean, boundary
        offset = (boundary - clean).astype(np.float64)
        self.radius = np.linalg.norm(offset, axis=1)  # the diameter, |b - x|
        self.along = unit_rows(offset)
        # The estimate's part across b - x; an estimate parallel to it gives no plane, and theta = 0 ends the search.
        across = normal - np.sum(normal * self.along, axis=1, keepdims=True) * self.along
        self.across = unit_rows(across)
        self.theta = np.arctan2(np.linalg.norm(across, axis=1), np.sum(normal * self.along, axis=1))

    def point(self, rows: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """The semicircle's points for ``rows`` at angles ``phi`` off b - x, each ``|b - x| cos(phi)`` from ``x``."""
        direction = np.cos(phi)[:, None] * self.along[rows] + np.sin(phi)[:, None] * self.across[rows]
        return (self.clean[rows] + (self.radius[rows] * np.cos(phi))[:, None] * direction).astype(np.float32)

    def chord(self, a: np.ndarray | float, b: np.ndarray) -> np.ndarray:
        """L2 distance between the semicircle's points at angles ``a`` and ``b``: |b - x| sin(b - a) (inscribed)."""
        return self.radius * np.abs(np.sin(b - a))
