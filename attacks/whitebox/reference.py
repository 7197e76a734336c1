"""White-box minimal-norm reference: Fast Minimum-Norm (FMN) L2 (Pintor, Roli, Brendel & Biggio, NeurIPS 2021).

Not a label-only attack: the scorer runs it when it holds the model itself (``--model
DIR``), to show how close the black-box suite comes to what gradients find. Each FMN
step moves along the normalised gradient of the logit margin and projects onto an L2
ball whose radius shrinks by ``gamma`` while the point is adversarial and grows while it
is not (before the first adversarial, it jumps to the linearised boundary); step size and
``gamma`` are cosine-annealed. Its default step (1.0) is not converged after 1000 steps
on [0, 1] images (docs/benchmarks.md "Comparing with Foolbox 3 fairly"), so several step
sizes run and each image keeps its best.
Two changes from the paper. Gradient components that push a pixel already at 0 or 1
out of the box are dropped before the step: otherwise, on images with large black areas
(Fashion-MNIST), the box clipping after each projection shrinks the step below the
linearised distance to the boundary, and FMN can stall short of it (a quarter of the
natural CNN's images were never fooled in 2 x 1000 steps). And before the first
adversarial, the linearised radius grows by ``gamma`` too, so that a boundary it
predicts exactly (a flat one) is crossed.

Distances follow the harness's rule: the adversarial is rounded to uint8 and
re-classified; a bisection toward the clean image on the uint8 lattice (queries are free
here) then keeps the closest rounded point that is still misclassified. Given starting
points (the scorer passes the suite's adversarials), each start is such a candidate too, so
the reference is never farther than the suite even where FMN's float optimum lies between
grey levels.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from attacks.access.lattice import l2
from attacks.whitebox.surrogate import margin
from avc_common.images import to_uint8, to_unit
from avc_common.tensors import to_hwc, to_model_input

Logits = Callable[[torch.Tensor], torch.Tensor]


def fmn_l2(net: Logits, x: torch.Tensor, labels: torch.Tensor, steps: int = 1000, alpha_init: float = 1.0,
           alpha_final: float | None = None, gamma_init: float = 0.05, gamma_final: float = 0.001,
           start: torch.Tensor | None = None) -> torch.Tensor:
    """FMN L2 on float N x C x H x W images in [0, 1]; the smallest adversarial found per row (``x`` where none).

    ``start`` (default ``x``): points to start from; from an adversarial one, the ball
    starts at its distance and only shrinks around better points from there.
    """
    alpha_final = alpha_init / 100 if alpha_final is None else alpha_final
    n = len(x)
    view = (n,) + (1,) * (x.dim() - 1)
    delta = (torch.zeros_like(x) if start is None else start - x).requires_grad_(True)
    epsilon = delta.detach().flatten(1).norm(dim=1)
    worst = torch.maximum(x, 1 - x).flatten(1).norm(dim=1)
    best_norm = torch.full((n,), math.inf, device=x.device)
    best_delta = torch.zeros_like(x)
    found = torch.zeros(n, dtype=torch.bool, device=x.device)
    for k in range(steps):
        cosine = (1 + math.cos(math.pi * k / steps)) / 2
        alpha = alpha_final + (alpha_init - alpha_final) * cosine
        gamma = gamma_final + (gamma_init - gamma_final) * cosine
        with torch.enable_grad():
            loss = margin(net(x + delta), labels)
            (grad,) = torch.autograd.grad(loss.sum(), delta)
        loss = loss.detach()
        point = x + delta.detach()
        grad = grad.masked_fill(((point <= 0) & (grad < 0)) | ((point >= 1) & (grad > 0)), 0)
        norm = delta.detach().flatten(1).norm(dim=1)
        is_adv = loss > 0
        better = is_adv & (norm < best_norm)
        found |= is_adv
        best_norm = torch.where(better, norm, best_norm)
        best_delta = torch.where(better.view(view), delta.detach(), best_delta)
        grad_norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
        epsilon = torch.where(is_adv, torch.minimum(epsilon * (1 - gamma), best_norm),
                              torch.where(found, epsilon, norm + loss.abs() / grad_norm) * (1 + gamma))
        epsilon = torch.minimum(epsilon, worst)
        with torch.no_grad():
            delta += alpha * grad / grad_norm.view(view)
            delta *= (epsilon / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1).view(view)
            delta.copy_((x + delta).clamp(0, 1) - x)
    return x + best_delta


def minimal_l2(net: Logits, images: np.ndarray, labels: np.ndarray, steps: int = 1000,
               step_sizes: tuple[float, ...] = (1.0, 0.1), batch_size: int = 256,
               device: str | torch.device = "cpu", starts: np.ndarray | None = None) -> np.ndarray:
    """Per image, the verified L2 (on [0, 1], after uint8 rounding) of the best FMN adversarial over ``step_sizes``.

    ``images``: uint8 N x H x W x C; ``labels``: true classes. Misclassified clean images
    get 0, images no run fooled ``inf``. ``starts`` (uint8, like ``images``; e.g. the
    black-box suite's best adversarials) adds one run per step size from those points:
    on robust models FMN from the clean image can stop at a farther boundary than
    black-box attacks find. Runs in chunks of ``batch_size`` images.
    """
    labels = np.asarray(labels, dtype=np.int64)
    out = np.full(len(images), np.inf)
    for first in range(0, len(images), batch_size):
        chunk = slice(first, first + batch_size)
        out[chunk] = _minimal_chunk(net, images[chunk], labels[chunk], steps, step_sizes, torch.device(device),
                                    None if starts is None else starts[chunk])
    return out


def _minimal_chunk(net: Logits, images: np.ndarray, labels: np.ndarray, steps: int,
                   step_sizes: tuple[float, ...], device: torch.device, starts: np.ndarray | None) -> np.ndarray:
    clean = to_unit(images)
    x = to_model_input(images, device)
    y = torch.from_numpy(labels).to(device)
    best = np.where(_predict(net, images, device) != labels, 0.0, np.inf)
    origins = [None]
    if starts is not None:
        origins.append(to_model_input(starts, device))
        # The starts themselves: FMN keeps its best point in floats, which can lie closer than any uint8 image
        # (a perturbation spread thin over many pixels rounds away), so its result alone can miss them.
        best = np.minimum(best, _on_lattice(net, clean, to_unit(starts), labels, device))
    for alpha in step_sizes:
        for origin in origins:
            adv = to_hwc(fmn_l2(net, x, y, steps, alpha, start=origin))
            best = np.minimum(best, _on_lattice(net, clean, adv, labels, device))
    return best


def _on_lattice(net: Logits, clean: np.ndarray, adv: np.ndarray, labels: np.ndarray, device: torch.device,
                grow: tuple[float, ...] = (1.0, 1.01, 1.03, 1.1, 1.3, 2.0, 4.0, 8.0, 16.0),
                halvings: int = 16) -> np.ndarray:
    """L2 of the closest uint8 point on the line clean -> clean + s * (adv - clean) still misclassified.

    Rounding can undo an adversarial that sits on the boundary, so the line is first
    extended (``grow``) until the rounded point is misclassified, then bisected. Where the
    boundary is a fraction of a grey level away, FMN's perturbation is spread so thin that
    rounding undoes it entirely until the line is several times longer (the largest factors).
    """
    diff = adv - clean
    hi = np.full(len(clean), np.nan)
    for scale in grow:
        rows = np.flatnonzero(np.isnan(hi))
        hit = _misclassified(net, _point(clean[rows], diff[rows], np.full(len(rows), scale)), labels[rows], device)
        hi[rows[hit]] = scale
    rows = np.flatnonzero(np.isfinite(hi))
    lo = np.zeros(len(rows))
    for _ in range(halvings):
        mid = (lo + hi[rows]) / 2
        hit = _misclassified(net, _point(clean[rows], diff[rows], mid), labels[rows], device)
        hi[rows[hit]] = mid[hit]
        lo[~hit] = mid[~hit]
    point = _point(clean[rows], diff[rows], hi[rows])
    verified = rows[_misclassified(net, point, labels[rows], device)]
    out = np.full(len(clean), np.inf)
    if len(verified):
        out[verified] = l2(to_unit(point[np.isin(rows, verified)]), clean[verified])
    return out


def _point(clean: np.ndarray, diff: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The uint8 images clean + scale * diff (one scale per row)."""
    return to_uint8(clean + scale.reshape(-1, 1, 1, 1) * diff)


def _misclassified(net: Logits, images: np.ndarray, labels: np.ndarray, device: torch.device) -> np.ndarray:
    return _predict(net, images, device) != labels


def _predict(net: Logits, images: np.ndarray, device: torch.device) -> np.ndarray:
    """Labels of uint8 N x H x W x C images, computed exactly as the label-only models do."""
    if not len(images):
        return np.empty(0, dtype=np.int64)
    with torch.inference_mode():
        return net(to_model_input(images, device)).argmax(dim=1).to("cpu", torch.int64).numpy()
