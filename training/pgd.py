"""White-box projected gradient attacks (L-inf and L2) shared by training and evaluation.

``project`` and ``ascent_step`` are the two pieces every inner maximisation uses
(TRADES, PGD adversarial training, PGD evaluation), so the threat models are
defined once.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("linf", "l2")


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norm, shaped to broadcast against ``t``."""
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project ``x_adv`` onto the eps-ball around ``x`` and then onto the pixel box [0, 1]."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    elif norm == "l2":
        delta = delta * (eps / _flat_norm(delta)).clamp(max=1.0)
    else:
        raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")
    return (x + delta).clamp(0.0, 1.0)


def ascent_step(x_adv: torch.Tensor, grad: torch.Tensor, step_size: float, norm: str) -> torch.Tensor:
    """One steepest-ascent step: the gradient's sign (L-inf) or its unit direction (L2)."""
    if norm == "linf":
        return x_adv + step_size * grad.sign()
    return x_adv + step_size * grad / _flat_norm(grad)


def random_start(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """A uniformly random point of the eps-ball (L-inf) or a random direction of radius U(0, eps) (L2)."""
    if norm == "linf":
        return project(x + torch.empty_like(x).uniform_(-eps, eps), x, eps, norm)
    noise = torch.randn_like(x)
    radius = eps * torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device)
    return project(x + radius * noise / _flat_norm(noise), x, eps, norm)


def cw_margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin: best wrong logit minus true logit (positive = misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    wrong = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return wrong - true


ATTACK_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "ce": lambda logits, y: F.cross_entropy(logits, y, reduction="none"),
    "cw": cw_margin_loss,
}


def pgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float,
               steps: int, norm: str = "linf", loss: str = "ce", restarts: int = 1,
               random_init: bool = True) -> torch.Tensor:
    """Untargeted PGD maximising ``loss``; a later restart replaces an image's point only if it fools.

    The model's mode is left as the caller set it. Only input gradients are computed.
    """
    loss_fn = ATTACK_LOSSES[loss]
    best = None
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        x_adv = random_start(x, eps, norm) if random_init else x.clone()
        for _ in range(steps):
            x_adv.requires_grad_(True)
            grad, = torch.autograd.grad(loss_fn(model(x_adv).float(), y).sum(), x_adv)
            x_adv = project(ascent_step(x_adv.detach(), grad, step_size, norm), x, eps, norm)
        with torch.no_grad():
            now_fooled = model(x_adv).argmax(1) != y
        if best is None:
            best = x_adv
        else:
            take = now_fooled & ~fooled
            best[take] = x_adv[take]
        fooled |= now_fooled
        if bool(fooled.all()):
            break
    return best
