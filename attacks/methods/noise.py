"""Cheap starting points: noise and contrast reduction of growing strength, then bisection toward the clean image.

Each attack tries strengths weakest first and keeps, per image, the first one that is
misclassified, so an easy image costs a few queries; the bisection then walks back to
the boundary at uint8 resolution. These seed the boundary attacks and often already
give a fair distance on weak models.
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import numpy as np

from attacks.access.budgeted import BudgetedModel
from attacks.access.lattice import quantize
from attacks.blocks.linesearch import bisect
from attacks.methods.base import Attack


@dataclass(frozen=True)
class NoiseSearch(Attack):
    """``steps`` strengths from ``min_strength`` to ``max_strength`` (geometric), ``repeats`` noise draws.

    With ``until_found``, later draws only go to images that have no adversarial yet (a starting-point search).
    """

    steps: int = 12
    min_strength: float = 0.02
    max_strength: float = 1.0
    repeats: int = 1
    until_found: bool = False

    def _run(self, model: BudgetedModel, ids: np.ndarray, rng: np.random.Generator) -> None:
        for _ in range(self.repeats):
            if self.until_found:
                ids = ids[~np.isfinite(model.best_l2[ids])]
            if not len(ids):
                return
            clean = model.clean(ids)
            noise = self._noise(rng, clean.shape)
            found = np.zeros(len(ids), dtype=bool)
            adv = clean.copy()
            for strength in np.geomspace(self.min_strength, self.max_strength, self.steps):
                rows = np.flatnonzero(~found)
                rows = rows[model.remaining(ids[rows]) >= 1]
                if not len(rows):
                    break
                x = quantize(self._perturb(clean[rows], noise[rows], np.float32(strength)))
                hit = model.is_adversarial(x, ids[rows])
                found[rows[hit]] = True
                adv[rows[hit]] = x[hit]
            bisect(model, ids[found], clean[found], adv[found])

    def _noise(self, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
        """One noise pattern per image, drawn once per repeat and scaled by the growing strength."""
        return rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)

    @abstractmethod
    def _perturb(self, clean: np.ndarray, noise: np.ndarray, strength: np.float32) -> np.ndarray:
        """The image to try at ``strength`` (clipping and rounding happen afterwards)."""


@dataclass(frozen=True)
class AdditiveUniformNoise(NoiseSearch):
    """clean + strength * U[-1, 1] per pixel."""

    def _perturb(self, clean: np.ndarray, noise: np.ndarray, strength: np.float32) -> np.ndarray:
        return clean + strength * noise


@dataclass(frozen=True)
class AdditiveGaussianNoise(NoiseSearch):
    """clean + strength * N(0, 1) per pixel."""

    def _noise(self, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
        return rng.standard_normal(size=shape, dtype=np.float32)

    def _perturb(self, clean: np.ndarray, noise: np.ndarray, strength: np.float32) -> np.ndarray:
        return clean + strength * noise


@dataclass(frozen=True)
class BlendedUniformNoise(NoiseSearch):
    """(1 - strength) * clean + strength * U[0, 1] per pixel: at strength 1, pure noise."""

    def _noise(self, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
        return rng.uniform(0.0, 1.0, size=shape).astype(np.float32)

    def _perturb(self, clean: np.ndarray, noise: np.ndarray, strength: np.float32) -> np.ndarray:
        return (1 - strength) * clean + strength * noise


@dataclass(frozen=True)
class ContrastReduction(BlendedUniformNoise):
    """(1 - strength) * clean + strength * 0.5: towards a uniform grey image (deterministic, so one repeat)."""

    def _noise(self, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
        return np.full(shape, 0.5, dtype=np.float32)
