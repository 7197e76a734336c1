"""Surrogate-biased Boundary Attack (Brunner, Diehl, Truong Le & Knoll, "Guessing Smart: Biased Sampling for
Efficient Black-Box Adversarial Attacks", ICCV 2019; an attack entry of the NeurIPS 2018 AVC).

The Boundary Attack's spherical steps are random; here each one is a mix of a random
low-frequency direction (the paper's Perlin noise; low DCT frequencies here, as in
:class:`attacks.methods.boundary.BoundaryAttack`) and the gradient of a surrogate ensemble's
adversarial loss at the current point, both made orthogonal to the line to the clean
image: ``sqrt(1 - bias) * random + sqrt(bias) * gradient``. The gradient points to where
the target is more likely still fooled, so more of the steps toward the clean image
succeed. It is recomputed only for images whose point moved since the last step.

With ``gradient_from="robust"`` only the adversarially trained surrogates give the
gradient: against a robust target, a natural surrogate's gradient is a worse guess
(docs/benchmarks.md "Choosing the top5 preset"). Against a natural target it is the other
way round, and a scorer does not know which kind it faces: ``gradient_from="adaptive"``
keeps both sources and picks one per image and step by Thompson sampling over how often
each source's steps have succeeded on that image (a step succeeds when the point stays
adversarial), so each image settles on the gradient that guesses its boundary best.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from attacks.access.budgeted import BudgetedModel
from attacks.blocks.directions import sample_directions, unit_rows
from attacks.methods.boundary import BoundaryAttack
from attacks.whitebox.surrogate import COMBINE, Ensemble, load_ensemble, robust_surrogates, to_rows, to_tensor

GRADIENT_FROM = ("all", "robust", "adaptive")


@dataclass(frozen=True)
class BiasedBoundaryAttack(BoundaryAttack):
    """``surrogates``: artifact folders; ``bias``: the gradient's share of each spherical step
    (0: the plain Boundary Attack, 1: the gradient alone); ``gradient_from``: ``"all"`` surrogates, only the
    ``"robust"`` (adversarially trained, per their manifests) ones (all of them if none is), or ``"adaptive"``: either
    of those two per image and step, by their steps' successes on it; ``device``: where the
    surrogate gradients run (a name or a ``torch.device``; left out of ``repr`` and equality, since a run resumed on
    another device is the same run)."""

    surrogates: tuple[str, ...] = ()
    bias: float = 0.5
    combine: str = "logits"
    gradient_from: str = "all"
    device: str | torch.device = field(default="cpu", repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "device", torch.device(self.device))  # frozen; one type whatever the caller passed
        if not self.surrogates:
            raise ValueError("the biased boundary attack needs at least one surrogate artifact folder "
                             "(surrogates=(...))")
        if not 0 <= self.bias <= 1:
            raise ValueError(f"bias must be in [0, 1], got {self.bias}")
        if self.combine not in COMBINE:
            raise ValueError(f"combine must be one of {COMBINE}, got {self.combine!r}")
        if self.gradient_from not in GRADIENT_FROM:
            raise ValueError(f"gradient_from must be one of {GRADIENT_FROM}, got {self.gradient_from!r}")

    def gradient_sources(self) -> tuple[tuple[str, ...], ...]:
        """The surrogate ensembles a step's bias gradient may come from: one, or with ``"adaptive"`` the robust
        ones and all of them when both kinds are given."""
        if self.gradient_from == "all":
            return (self.surrogates,)
        robust = robust_surrogates(self.surrogates)
        if self.gradient_from == "robust" and not robust:
            warnings.warn(f"gradient_from='robust' but no surrogate is adversarially trained; the bias uses all "
                          f"{len(self.surrogates)}", UserWarning, stacklevel=2)
        if not robust or robust == self.surrogates:
            return (self.surrogates,)
        return (robust,) if self.gradient_from == "robust" else (robust, self.surrogates)

    def _sampler(self, model: BudgetedModel, ids: np.ndarray,
                 rng: np.random.Generator) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        shape = model.images.shape[1:]
        ensembles = [load_ensemble(s, shape, model.info.num_classes, self.combine, self.device)
                     for s in self.gradient_sources()]
        return SurrogateBias(ensembles, model.clean(ids), model.labels[ids], shape, self.freq, self.bias, rng,
                             self.device)


class SurrogateBias:
    """Spherical-step directions for the images of one run: random low-frequency plus a surrogate gradient.

    With several ``ensembles`` each image's step takes its gradient from one of them, drawn by Thompson sampling
    (Beta posteriors of each source's step success rate on that image). The sampler learns a step's outcome from the
    next call: the Boundary Attack moves an image's point exactly when its step succeeded.
    """

    def __init__(self, ensembles: list[Ensemble], clean: np.ndarray, labels: np.ndarray, shape: tuple[int, int, int],
                 freq: float, bias: float, rng: np.random.Generator, device: torch.device) -> None:
        self.ensembles, self.clean, self.shape, self.freq, self.bias = ensembles, clean, shape, freq, bias
        self.rng, self.device = rng, device
        self.labels = torch.from_numpy(labels).to(device)
        self.at = [np.full_like(clean, np.nan) for _ in ensembles]  # per source, the point each gradient was taken at
        self.grad = [np.zeros_like(clean) for _ in ensembles]
        self.tries = np.zeros((len(clean), len(ensembles)), dtype=np.int64)
        self.hits = np.zeros_like(self.tries)
        self.source = np.full(len(clean), -1)  # the source of each image's last step (-1: none yet)
        self.before = np.zeros_like(clean)  # each image's point at its last step

    def __call__(self, rows: np.ndarray, points: np.ndarray) -> np.ndarray:
        source = self._choose(rows, points)
        grad = np.empty_like(points)
        for s, ensemble in enumerate(self.ensembles):
            mine = np.flatnonzero(source == s)
            grad[mine] = self._gradient(s, ensemble, rows[mine], points[mine])
        unit = unit_rows(points - self.clean[rows])
        grad = unit_rows(grad - np.sum(grad * unit, axis=1, keepdims=True) * unit)
        noise = sample_directions(self.rng, len(rows), self.shape, self.freq)
        noise = unit_rows(noise - np.sum(noise * unit, axis=1, keepdims=True) * unit)
        return np.sqrt(1 - self.bias) * noise + np.sqrt(self.bias) * grad

    def _choose(self, rows: np.ndarray, points: np.ndarray) -> np.ndarray:
        """Credit each image's last step to its source, then draw this step's source per image."""
        if len(self.ensembles) == 1:
            return np.zeros(len(rows), dtype=np.int64)
        stepped = self.source[rows] >= 0
        done, used = rows[stepped], self.source[rows[stepped]]
        self.tries[done, used] += 1
        self.hits[done, used] += np.any(self.before[done] != points[stepped], axis=1)
        hits, tries = self.hits[rows], self.tries[rows]
        source = np.argmax(self.rng.beta(hits + 1, tries - hits + 1), axis=1)
        self.source[rows], self.before[rows] = source, points
        return source

    def _gradient(self, s: int, ensemble: Ensemble, rows: np.ndarray, points: np.ndarray) -> np.ndarray:
        """Source ``s``'s gradient at ``points``, recomputed only for the images whose point moved since."""
        moved = np.flatnonzero(np.any(self.at[s][rows] != points, axis=1))
        if len(moved):
            stale = rows[moved]
            _, grad = ensemble.gradient(to_tensor(points[moved], self.shape, self.device), self.labels[stale])
            self.grad[s][stale] = to_rows(grad)
            self.at[s][stale] = points[moved]
        return self.grad[s][rows]
