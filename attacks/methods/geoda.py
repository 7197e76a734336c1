"""GeoDA (Rahmati, Moosavi-Dezfooli, Frossard & Dai, "GeoDA: a geometric framework for black-box
adversarial attacks", CVPR 2020), untargeted L2.

The boundary near a data point is nearly flat, so the smallest perturbation is (almost)
along its normal: each iteration estimates the normal at the current boundary point
from label-only probes (:mod:`attacks.blocks.gradient`), adds the estimate to the running sum
of all earlier ones (so every probe ever spent keeps sharpening one direction), and
then searches from the clean image straight along that direction for the boundary.
Probes are drawn in low DCT frequencies (``freq``) as in the paper's subspace; the
number of probes grows with ``probe_growth`` per iteration, echoing the paper's
increasing query allocation.

One change, measured on Fashion-MNIST CNNs: where the ray finds no boundary within
``grow`` times the current distance (the boundary is tilted or curved there, so the
flat-boundary guess fails and the point would never move), the iteration falls back to
HSJA's step from the boundary point along the local estimate, then bisects.

``prior`` (in probes) seeds the running sum with the direction from the clean image to the
start. From a transfer start that direction is already a better normal than the first
few dozen probes give, and without the seed the first iterations would walk away from
it (measured: docs/history/2026-11-experiments.md "Six surrogates and a seeded GeoDA"). It is
worth 0 from a random start.

Chosen by measuring on Fashion-MNIST SmallCNNs at 1000 queries per image: GeoDA finds
smaller perturbations than the tuned Boundary Attack and HSJA on both the natural and the
TRADES model, the best of the attacks that need no surrogates (current figures:
docs/benchmarks.md "Choosing the top5 preset"). SurFree (Maho et al., CVPR 2021) was tried
too and lost to all three (docs/history/2026-11-experiments.md "Tuning figures once quoted in
the code").
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from attacks.access.budgeted import BudgetedModel
from attacks.access.lattice import STEP, quantize
from attacks.blocks.directions import unit_rows
from attacks.blocks.gradient import Guide, estimate_normal, no_guide, probe_weight
from attacks.blocks.linesearch import bisect, jump
from attacks.methods.base import Attack, with_starts
from attacks.methods.starts import STARTS


@dataclass(frozen=True)
class GeoDA(Attack):
    """``min_probe``: probe size in uint8 levels RMS per pixel; ``reserve``: queries kept per iteration for searches;
    ``prior``: how many probes' worth of weight the start's own direction gets in the normal estimate."""

    first_probes: int = 40
    probe_growth: float = 1.2
    min_probe: float = 2.0
    freq: float = 0.5
    reserve: int = 12
    grow: float = 1.5
    probe_rows: int = 2048
    init: tuple[Attack, ...] = STARTS
    prior: float = 0.0

    def _run(self, model: BudgetedModel, ids: np.ndarray, rng: np.random.Generator) -> None:
        guide = self._guide(model)
        ids = with_starts(model, ids, rng, self.init)
        clean = model.clean(ids)
        boundary, _ = bisect(model, ids, clean, model.starts(ids))
        normal = self.prior * probe_weight(model.images.shape[1:], self.freq) * unit_rows(boundary - clean)
        delta = np.full(len(ids), self.min_probe * np.sqrt(model.dim) * STEP, dtype=np.float32)
        for t in itertools.count():
            evals = np.minimum(int(self.first_probes * self.probe_growth ** t), model.remaining(ids) - self.reserve)
            rows = np.flatnonzero(evals >= 2)
            if not len(rows):
                return
            dist = np.linalg.norm(boundary[rows] - clean[rows], axis=1)
            local = estimate_normal(model, ids[rows], boundary[rows], delta[rows], evals[rows], rng, self.freq,
                                    self.probe_rows)
            probes = evals[rows, None] * local  # this iteration's sum of signed probes
            normal[rows] += probes
            bias = np.asarray(guide(ids[rows], boundary[rows], probes, evals[rows]), dtype=np.float32)
            bias = np.broadcast_to(bias, local.shape)  # in probes' units: 0 leaves plain GeoDA's floats as they were
            found, point = self._along(model, ids[rows], clean[rows], boundary[rows], unit_rows(normal[rows] + bias))
            lost = np.flatnonzero(~found)
            local_bias = bias[lost] / evals[rows[lost], None].astype(np.float32)
            jumped, moved = jump(model, ids[rows[lost]], boundary[rows[lost]], unit_rows(local[lost] + local_bias),
                                 dist[lost] / np.sqrt(t + 1))
            lost = lost[moved]
            point[lost], _ = bisect(model, ids[rows[lost]], clean[rows[lost]], jumped[moved])
            found[lost] = True
            boundary[rows[found]] = point[found]

    def _guide(self, model: BudgetedModel) -> Guide:
        """What each iteration adds to the sum of its signed probes before the searches: nothing here (a surrogate
        prior in :class:`attacks.methods.prior_geoda.PriorGeoDA`)."""
        return no_guide

    def _along(self, model: BudgetedModel, ids: np.ndarray, clean: np.ndarray, boundary: np.ndarray,
               direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The boundary on the ray clean + r * direction, from the flat-boundary guess r = <boundary - clean, dir>.

        The guess grows by ``grow`` until adversarial (up to ``grow`` times the current
        distance), then bisection. Returns which rows found one, and the points.
        """
        dist = np.linalg.norm(boundary - clean, axis=1)
        radius = np.maximum(np.sum((boundary - clean) * direction, axis=1), dist / 4)
        found = np.zeros(len(ids), dtype=bool)
        outside = np.zeros(len(ids))  # largest radius known not adversarial
        pending = np.ones(len(ids), dtype=bool)
        while True:
            rows = np.flatnonzero(pending)
            rows = rows[model.remaining(ids[rows]) >= 1]
            if not len(rows):
                break
            hit = model.is_adversarial(quantize(clean[rows] + radius[rows, None] * direction[rows]), ids[rows])
            found[rows[hit]] = True
            pending[rows[hit]] = False
            miss = rows[~hit]
            outside[miss] = radius[miss]
            radius[miss] *= self.grow
            pending[miss[radius[miss] > dist[miss] * self.grow]] = False
        points = np.zeros_like(boundary)
        rows = np.flatnonzero(found)
        points[rows], _ = bisect(model, ids[rows], clean[rows], clean[rows] + radius[rows, None] * direction[rows],
                                 lo=outside[rows] / radius[rows])
        return found, points

