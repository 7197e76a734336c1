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
(docs/benchmarks.md "Choosing the top5 preset").
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

GRADIENT_FROM = ("all", "robust")


@dataclass(frozen=True)
class BiasedBoundaryAttack(BoundaryAttack):
    """``surrogates``: artifact folders; ``bias``: the gradient's share of each spherical step
    (0: the plain Boundary Attack, 1: the gradient alone); ``gradient_from``: ``"all"`` surrogates or only the
    ``"robust"`` (adversarially trained, per their manifests) ones, all of them if none is; ``device``: where the
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

    def gradient_surrogates(self) -> tuple[str, ...]:
        """The surrogates whose ensemble gives the bias gradient."""
        if self.gradient_from == "all":
            return self.surrogates
        robust = robust_surrogates(self.surrogates)
        if not robust:
            warnings.warn(f"gradient_from='robust' but no surrogate is adversarially trained; the bias uses all "
                          f"{len(self.surrogates)}", UserWarning, stacklevel=2)
        return robust or self.surrogates

    def _sampler(self, model: BudgetedModel, ids: np.ndarray,
                 rng: np.random.Generator) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        shape = model.images.shape[1:]
        ensemble = load_ensemble(self.gradient_surrogates(), shape, model.info.num_classes, self.combine,
                                 self.device)
        return SurrogateBias(ensemble, model.clean(ids), model.labels[ids], shape, self.freq, self.bias, rng,
                             self.device)


class SurrogateBias:
    """Spherical-step directions for the images of one run: random low-frequency plus the surrogate gradient."""

    def __init__(self, ensemble: Ensemble, clean: np.ndarray, labels: np.ndarray, shape: tuple[int, int, int],
                 freq: float, bias: float, rng: np.random.Generator, device: torch.device) -> None:
        self.ensemble, self.clean, self.shape, self.freq, self.bias, self.rng = ensemble, clean, shape, freq, bias, rng
        self.device = device
        self.labels = torch.from_numpy(labels).to(device)
        self.at = np.full_like(clean, np.nan)  # the point each cached gradient was taken at
        self.grad = np.zeros_like(clean)

    def __call__(self, rows: np.ndarray, points: np.ndarray) -> np.ndarray:
        moved = np.flatnonzero(np.any(self.at[rows] != points, axis=1))
        if len(moved):
            stale = rows[moved]
            _, grad = self.ensemble.gradient(to_tensor(points[moved], self.shape, self.device), self.labels[stale])
            self.grad[stale] = to_rows(grad)
            self.at[stale] = points[moved]
        unit = unit_rows(points - self.clean[rows])
        grad = self.grad[rows]
        grad = unit_rows(grad - np.sum(grad * unit, axis=1, keepdims=True) * unit)
        noise = sample_directions(self.rng, len(rows), self.shape, self.freq)
        noise = unit_rows(noise - np.sum(noise * unit, axis=1, keepdims=True) * unit)
        return np.sqrt(1 - self.bias) * noise + np.sqrt(self.bias) * grad
