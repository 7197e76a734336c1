"""Transfer priors for label-only normal estimates: the surrogates' gradients at the current boundary point join the
sum of signed probes, each weighted by how well it has agreed with the target's own answers so far. Mixed into GeoDA
(:mod:`attacks.methods.prior_geoda`) and CGBA (:mod:`attacks.methods.prior_cgba`) by :class:`SurrogatePriors`.

How much a prior weighs. One signed probe ``s u`` (``u`` a unit probe in the ``D`` sampled dimensions) adds on average
``mu = sqrt(2 / (pi D))`` along the true normal ``n`` (:func:`attacks.blocks.gradient.probe_weight`) and noise of unit
norm, so the sum of ``Q`` probes is ``Q mu n`` plus noise of norm ``sqrt(Q)``. For orthonormal priors ``p_j`` with
``c_j = <n, p_j>`` and ``C = sum c_j^2 < 1``, the sum plus ``sum A_j p_j`` points closest to ``n`` (in expectation)
at ``A_j = c_j / (mu (1 - C))``: the same for any ``Q``, so the prior is *added* to each search direction, never
accumulated. The ``c_j`` are unknown, but the probes measure them for free: ``E <s u, p_j> = mu c_j``, so
``c_j`` is estimated as ``sum <sum of signed probes, p_j> / (mu * probes)`` over all iterations so far (the priors
move with the boundary point; a surrogate's agreement with the target changes slowly). A surrogate that disagrees
with the target gets ``c_j`` about 0 and no weight: the attack is then the plain one. Estimates are clipped to
``c_j >= 0`` and ``sqrt(C) <= max_cos``, which bounds the weight of a prior the probes cannot yet tell from perfect.

How sure the measure is. Each probe's ``<s u, p_j>`` has variance at most ``1 / D``, so after ``N`` probes the
estimate of ``c_j`` has a standard error of ``sqrt(pi / (2 N))`` whatever ``D``: 0.23 after 30 probes, 0.07 after 300.
An attack whose direction is the sum plus the priors trusts that noise at its face value; ``caution`` takes that many
standard errors off each estimate first, so a surrogate is trusted only as far as the probes have shown it to agree.
GeoDA adds every iteration's probes to one running sum, which outweighs an early, overrated prior; CGBA steers by each
iteration's few dozen probes alone, and with a weakly trained surrogate an overrated prior led it astray (measured:
docs/benchmarks.md "Better surrogates on the proxy"), hence ``caution`` 1 for ``prior_cgba`` and 0 for ``prior_geoda``.

Priors (``priors``): ``"kind"`` (default) one per kind of surrogate, the natural ones' ensemble and the adversarially
trained ones' (:func:`attacks.whitebox.surrogate.ensembles_by_kind`): which kind a target follows differs between
natural and robust targets (docs/history/2026-11-experiments.md "Six surrogates and a seeded GeoDA"), and here
the probes decide per image. ``"each"`` is one per surrogate, ``"ensemble"`` one for all of them. Each prior is the
gradient of the ensemble's margin loss (:meth:`attacks.whitebox.surrogate.Ensemble.gradient`) at the current
boundary point, orthonormalised in that order.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from attacks.access.budgeted import BudgetedModel
from attacks.blocks.gradient import Guide, probe_weight
from attacks.whitebox.surrogate import COMBINE, Ensemble, ensembles_by_kind, load_ensemble, to_rows, to_tensor

PRIORS = ("kind", "each", "ensemble")


@dataclass(frozen=True)
class SurrogatePriors:
    """The hyperparameters of an attack's surrogate priors, mixed into a probing attack (it has ``freq`` and calls
    ``self._guide(model)`` once per run): ``surrogates``: artifact folders (loaded on first use, once per process);
    ``priors``: one prior direction per ``"kind"`` of surrogate (natural, adversarially trained), per surrogate
    (``"each"``) or one for the ``"ensemble"``; ``combine``: how an ensemble averages its surrogates (``"logits"`` or
    ``"loss"``); ``max_cos``: the most the priors together are trusted to agree with the target's normal (their
    cosine; 1 would let a prior outweigh every probe); ``caution``: how many standard errors are taken off each
    prior's measured agreement before it is trusted (0: the estimate as it is); ``device``: where the surrogate
    gradients run (a name or a ``torch.device``; left out of ``repr`` and equality, since a run resumed on another
    device is the same run)."""

    surrogates: tuple[str, ...] = ()
    priors: str = "kind"
    combine: str = "logits"
    max_cos: float = 0.95
    caution: float = 0.0
    device: str | torch.device = field(default="cpu", repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()  # the attack's own checks
        object.__setattr__(self, "device", torch.device(self.device))  # frozen; one type whatever the caller passed
        if not self.surrogates:
            raise ValueError(f"{type(self).__name__} needs at least one surrogate artifact folder (surrogates=(...))")
        if self.priors not in PRIORS:
            raise ValueError(f"priors must be one of {PRIORS}, got {self.priors!r}")
        if self.combine not in COMBINE:
            raise ValueError(f"combine must be one of {COMBINE}, got {self.combine!r}")
        if not 0 < self.max_cos < 1:
            raise ValueError(f"max_cos must be in (0, 1), got {self.max_cos}")
        if not self.caution >= 0:
            raise ValueError(f"caution must be at least 0 (standard errors), got {self.caution}")

    def _guide(self, model: BudgetedModel) -> Guide:
        """The priors of ``model``'s images, loaded for its shape and classes (a surrogate of another shape is refused
        before any query but the clean check)."""
        shape = model.images.shape[1:]
        classes = model.info.num_classes
        if self.priors == "each":
            ensembles = [load_ensemble([s], shape, classes, self.combine, self.device) for s in self.surrogates]
        elif self.priors == "ensemble":
            ensembles = [load_ensemble(self.surrogates, shape, classes, self.combine, self.device)]
        else:  # "kind": the whole (first) is the kinds' mix; with two kinds, each kind alone spans it
            ensembles = ensembles_by_kind(self.surrogates, shape, classes, self.combine, self.device)
            ensembles = ensembles[1:] or ensembles
        return SurrogatePrior(ensembles, model.labels, shape, probe_weight(shape, self.freq), self.max_cos, self.device,
                              self.caution)


class SurrogatePrior:
    """For the images of one model (by id): the priors at their boundary points, weighted by their measured
    agreement with the target so far."""

    def __init__(self, ensembles: list[Ensemble], labels: np.ndarray, shape: tuple[int, int, int], weight: float,
                 max_cos: float, device: torch.device, caution: float = 0.0) -> None:
        self.ensembles, self.shape, self.weight, self.max_cos, self.device = ensembles, shape, weight, max_cos, device
        self.caution = caution
        self.labels = torch.from_numpy(labels).to(device)
        self.agreement = np.zeros((len(labels), len(ensembles)))  # sum over iterations of <signed probes, prior>
        self.probes = np.zeros(len(labels))

    def __call__(self, ids: np.ndarray, points: np.ndarray, probes: np.ndarray, evals: np.ndarray) -> np.ndarray:
        """What to add to a sum of signed probes at ``points`` (of images ``ids``), given this iteration's sum
        ``probes`` of ``evals`` probes each."""
        priors = self.directions(ids, points)  # images x priors x dim, orthonormal per image
        self.agreement[ids] += np.einsum("nkd,nd->nk", priors, probes)
        self.probes[ids] += evals
        cos = self.agreement[ids] / (self.weight * self.probes[ids, None])
        # its standard error is sqrt(pi / (2 probes)); ``caution`` of them are taken off before it is trusted
        cos = np.maximum(cos - self.caution * np.sqrt(np.pi / (2 * self.probes[ids, None])), 0)
        total = np.sqrt(np.sum(cos ** 2, axis=1, keepdims=True))
        cos *= np.minimum(1, self.max_cos / np.maximum(total, 1e-12))
        scale = cos / (self.weight * (1 - np.sum(cos ** 2, axis=1, keepdims=True)))
        return np.einsum("nk,nkd->nd", scale, priors).astype(np.float32)

    def directions(self, ids: np.ndarray, points: np.ndarray) -> np.ndarray:
        """Each ensemble's margin gradient at ``points``, orthonormalised per row in order (Gram-Schmidt; a zero
        gradient, or one in the span of those before it, stays zero)."""
        x = to_tensor(points, self.shape, self.device)
        grads = np.stack([to_rows(ensemble.gradient(x, self.labels[ids])[1]) for ensemble in self.ensembles], 1)
        out = np.zeros(grads.shape)
        for k in range(grads.shape[1]):
            v = grads[:, k].astype(np.float64)
            v -= np.einsum("nj,njd->nd", np.einsum("njd,nd->nj", out[:, :k], v), out[:, :k])
            norm = np.linalg.norm(v, axis=1, keepdims=True)
            kept = norm > 1e-6 * np.linalg.norm(grads[:, k], axis=1, keepdims=True)
            out[:, k] = np.where(kept, v / np.maximum(norm, 1e-30), 0)
        return out
