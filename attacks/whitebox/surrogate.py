"""Local surrogate models, white-box to the harness: loading, an ensemble loss, and L2 gradient attacks on them.

Transfer attacks (Papernot et al. 2016; the NeurIPS 2018 AVC's winning untargeted
entries) craft perturbations on models the attacker owns and only then ask the target.
Surrogates are model artifacts loaded through :func:`avc_common.artifact.load_artifact`
(hash-checked), once per process. Several surrogates form an ensemble (Liu et al.,
"Delving into Transferable Adversarial Examples", ICLR 2017) by averaging their logits
or their losses.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import lru_cache
from itertools import repeat

import numpy as np
import torch
from torch import nn

from avc_common.artifact import load_artifact, read_manifest
from avc_common.tensors import to_hwc, to_model_input

COMBINE = ("logits", "loss")
ROBUST_LOSSES = frozenset({"pgd_at", "trades"})  # manifest ``training.loss`` of adversarially trained models
_LOADING = threading.Lock()


def load_surrogate(path: str, device: str | torch.device = "cpu") -> tuple[nn.Module, tuple[int, int, int], int]:
    """The artifact at ``path`` as a frozen logits module on ``device``, with its input shape (H, W, C) and number
    of classes.

    Loaded once per (path, device) per process: ``"cpu"`` and ``torch.device("cpu")`` are one cache entry, so the
    scorer's validation load and the attacks' share it. One load at a time: the attacks of a score run in several
    threads, and ``torch.export.load`` is not safe to call from two at once.
    """
    with _LOADING:
        return _load_surrogate(str(path), str(torch.device(device)))


@lru_cache(maxsize=16)
def _load_surrogate(path: str, device: str) -> tuple[nn.Module, tuple[int, int, int], int]:
    artifact = load_artifact(path, device=device)
    net = artifact.model.eval().requires_grad_(False)
    return net, artifact.input_shape, artifact.num_classes


@lru_cache(maxsize=16)
def training_loss(path: str) -> str | None:
    """The training loss an artifact's manifest names (hash-checked once per process, as the models are loaded)."""
    return read_manifest(path)["training"].get("loss")


def robust_surrogates(paths: Sequence[str]) -> tuple[str, ...]:
    """Those of ``paths`` whose manifest says they were adversarially trained (``training.loss`` in ``ROBUST_LOSSES``).

    Their gradients transfer better to a robust target than a naturally trained model's do.
    """
    return tuple(str(p) for p in paths if training_loss(str(p)) in ROBUST_LOSSES)


def load_ensemble(paths: Sequence[str], shape: tuple[int, int, int], num_classes: int, combine: str = "logits",
                  device: str | torch.device = "cpu", weights: Sequence[float] | None = None) -> Ensemble:
    """The surrogates at ``paths`` as one :class:`Ensemble`; refuses any whose input shape or classes differ."""
    if not paths:
        raise ValueError("no surrogate artifact folders given")
    nets = []
    for path in paths:
        net, input_shape, classes = load_surrogate(str(path), device)
        if input_shape != tuple(shape) or classes != num_classes:
            raise ValueError(f"surrogate {path} takes {tuple(input_shape)} images with {classes} classes; "
                             f"the target takes {tuple(shape)} with {num_classes}")
        nets.append(net)
    return Ensemble(nets, combine, weights)


def margin(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Per row: the best other class's logit minus the true class's (> 0 exactly when misclassified), or with
    ``targets``, the target class's logit minus the true class's."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    if targets is not None:
        return logits.gather(1, targets[:, None]).squeeze(1) - true
    other = logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
    return other - true


def ensembles_by_kind(paths: Sequence[str], shape: tuple[int, int, int], num_classes: int, combine: str = "logits",
                      device: str | torch.device = "cpu") -> list[Ensemble]:
    """All of ``paths`` with each kind (natural, adversarially trained) weighted equally, then each kind on its own.

    A robust and a natural target's boundaries follow different surrogates: natural
    surrogates' directions reach a natural target's boundary sooner alone than averaged with
    a robust one, while a robust target is best reached from the mix (Fashion-MNIST CNNs:
    docs/history/2026-11-experiments.md "Six surrogates and a seeded GeoDA"). With one kind
    only, this is the one ensemble of all ``paths``.
    """
    paths = [str(p) for p in paths]
    robust = robust_surrogates(paths)
    kinds = [k for k in ([p for p in paths if p not in robust], list(robust)) if k]
    whole = [p for k in kinds for p in k]
    weights = [1 / (len(kinds) * len(k)) for k in kinds for _ in k]
    ensembles = [load_ensemble(whole, shape, num_classes, combine, device, weights)]
    if len(kinds) > 1:
        ensembles += [load_ensemble(k, shape, num_classes, combine, device) for k in kinds]
    return ensembles


class Ensemble:
    """Surrogates attacked together; ``combine`` averages their ``"logits"`` (then one margin) or their ``"loss"``es.

    Margins are scaled by each model's own logit spread (mean per-row std), so that no
    surrogate with large logits dominates the average. ``weights`` (default equal) weight
    the average; they are normalised to sum to 1.
    """

    def __init__(self, nets: Sequence[nn.Module], combine: str = "logits",
                 weights: Sequence[float] | None = None) -> None:
        if not nets:
            raise ValueError("an ensemble needs at least one surrogate")
        if combine not in COMBINE:
            raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
        weights = [1.0] * len(nets) if weights is None else list(weights)
        if len(weights) != len(nets) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"need one non-negative weight per surrogate ({len(nets)}), not all 0; got {weights}")
        self.nets = list(nets)
        self.combine = combine
        self.weights = torch.tensor(weights) / sum(weights)

    def loss(self, x: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Per-row adversarial loss (higher is more adversarial) of float N x C x H x W images in [0, 1]: the
        :func:`margin`, untargeted or toward ``targets``."""
        if self.combine == "logits":
            return margin(self.logits(x), labels, targets)
        margins = torch.stack([margin(z, labels, targets) for z in self._scaled_logits(x)])
        return self.weights.to(margins.device) @ margins

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The weighted average of the surrogates' scaled logits: the ensemble's own class scores."""
        logits = self._scaled_logits(x)
        return torch.einsum("k,knc->nc", self.weights.to(logits.device), logits)

    def _scaled_logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([_normalised(net(x)) for net in self.nets])

    def gradient(self, x: torch.Tensor, labels: torch.Tensor,
                 targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-row loss and its gradient with respect to ``x``."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            loss = self.loss(x, labels, targets)
            (grad,) = torch.autograd.grad(loss.sum(), x)
        return loss.detach(), grad


def _normalised(logits: torch.Tensor) -> torch.Tensor:
    return logits / logits.detach().std(dim=1, keepdim=True).mean().clamp_min(1e-6)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (v.dim() - 1)))


def pgd_l2(ensemble: Ensemble, x: torch.Tensor, labels: torch.Tensor, radius: float | torch.Tensor, steps: int,
           momentum: float = 0.0, batch_size: int = 256, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Maximise the ensemble's loss within the L2 ball of ``radius`` around ``x`` (and the [0, 1] box).

    ``momentum`` = 0 is PGD (Madry et al., ICLR 2018) with normalised L2 steps of
    2.5 * radius / steps; > 0 is the momentum-iterative method (MI-FGSM, Dong et al.,
    CVPR 2018), whose accumulated direction transfers better between models. ``radius``
    is one for all rows or one per row; ``targets`` (one class per row) makes the attack
    targeted. Returns the last iterate (the one with the largest perturbation budget
    spent), in chunks of ``batch_size`` rows.
    """
    radius = torch.as_tensor(radius, dtype=x.dtype, device=x.device).expand(len(x)).reshape(-1, 1, 1, 1)
    chunks = [x.split(batch_size), labels.split(batch_size), radius.split(batch_size),
              repeat(None) if targets is None else targets.split(batch_size)]
    out = [_pgd_chunk(ensemble, *rows, steps, momentum) for rows in zip(*chunks)]
    return torch.cat(out) if out else x.clone()


def _pgd_chunk(ensemble: Ensemble, x: torch.Tensor, labels: torch.Tensor, radius: torch.Tensor,
               targets: torch.Tensor | None, steps: int, momentum: float) -> torch.Tensor:
    step = 2.5 * radius / steps
    delta = torch.zeros_like(x)
    velocity = torch.zeros_like(x)
    for _ in range(steps):
        _, grad = ensemble.gradient(x + delta, labels, targets)
        velocity = momentum * velocity + _unit(grad)
        delta = delta + step * _unit(velocity)
        norm = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        delta = delta * (radius / torch.maximum(norm, radius).clamp_min(1e-12))
        delta = (x + delta).clamp(0, 1) - x
    return x + delta


def to_tensor(rows: np.ndarray, shape: tuple[int, int, int], device: str | torch.device = "cpu") -> torch.Tensor:
    """Float rows (n x H*W*C, HWC order, [0, 1]) as the N x C x H x W batch a model takes."""
    return to_model_input(np.asarray(rows, dtype=np.float32).reshape(-1, *shape), device)


def to_rows(x: torch.Tensor) -> np.ndarray:
    """An N x C x H x W batch as float32 rows in HWC order (the attacks' layout)."""
    return to_hwc(x).reshape(len(x), -1)
