"""Tangent Attack (Ma, Guo, Chen & Yan, "Finding Optimal Tangent Points for Reducing Distortions of Hard-label
Attacks", NeurIPS 2021), untargeted L2: HSJA with another step.

HSJA jumps from the boundary point ``b`` along the estimated normal and bisects back toward the clean image ``x``.
Where the boundary is locally flat, the points of a small ball around ``b`` on the normal's side (a hemisphere of
radius ``R``) are adversarial, and of the rays from ``x`` through that hemisphere, the one that touches it at its
tangent point meets the boundary closest to ``x``, closer than the ray through HSJA's jump of the same size. So each
iteration moves to the tangent point (:func:`attacks.blocks.linesearch.tangent_points`, closed form in the plane
of ``x - b`` and the normal) and bisects from ``x`` toward it. ``R`` follows HSJA's step, ``|b - x| / sqrt(t)``,
halved until the tangent point is adversarial, as in the authors' code (but starting at no more than
``|b - x| / 2``: the first iteration's ``|b - x|`` would give ``x`` itself); everything else (probes, their sizes for a
uint8 model, the budget per iteration) is :class:`attacks.methods.hsja.HopSkipJump`'s. The paper's table has 3 to 9%
smaller mean L2 than HSJA at 1000 queries on ImageNet. Here (docs/benchmarks.md "Tangent and Triangle Attacks") it
was 3 to 5% closer than HSJA per image on the 64x64x3 proxy with probes in the full space, tied with HSJA's best
setting there (probes in the lowest quarter of the frequencies) and was 2 to 7% farther at 28x28x1, so it is in no
preset.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attacks.access.budgeted import BudgetedModel
from attacks.blocks.linesearch import tangent_jump
from attacks.methods.hsja import HopSkipJump


@dataclass(frozen=True)
class TangentAttack(HopSkipJump):
    """HSJA's fields; the step goes to the tangent point of the hemisphere instead of along the normal."""

    def _step(self, model: BudgetedModel, ids: np.ndarray, clean: np.ndarray, boundary: np.ndarray,
              normal: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        radius = np.minimum(size, np.linalg.norm(boundary - clean, axis=1) / 2)  # from |b - x| or more it is x itself
        return tangent_jump(model, ids, clean, boundary, normal, radius)
