"""Training losses: TRADES (Zhang et al., ICML 2019, Algorithm 1) and two baselines.

Every loss has the signature ``loss(model, x, y, cfg, attack_model=None) -> (loss, logits)``
(``logits``: what the cross-entropy term saw) and leaves the model in train mode, so
the training loop treats them alike. ``attack_model`` is the same network without the
DistributedDataParallel wrapper: the inner maximisation needs no weight gradients, so
it must not start a gradient all-reduce.

TRADES' inner maximisation runs with the model in eval mode (as the reference
does). Unlike the reference, the clean prediction that is the KL target is computed
once per batch without a graph, not once per inner step, and the clean batch goes
through the network once in the outer loss, not twice.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.pgd import ascent_step, pgd_attack, project


@dataclass(frozen=True)
class AttackConfig:
    """The threat model and inner-maximisation budget of adversarial training."""

    epsilon: float = 0.031
    step_size: float = 0.007
    steps: int = 10
    beta: float = 6.0
    norm: str = "linf"


def kl_batchmean(logits_adv: torch.Tensor, probs_clean: torch.Tensor) -> torch.Tensor:
    """KL(p_clean || p_adv) summed over classes and averaged over the batch."""
    return F.kl_div(F.log_softmax(logits_adv.float(), dim=1), probs_clean, reduction="batchmean")


def trades_adversary(model: nn.Module, x: torch.Tensor, probs_clean: torch.Tensor,
                     cfg: AttackConfig) -> torch.Tensor:
    """``x'`` maximising KL(f(x) || f(x')) by K projected ascent steps from ``x + 0.001 N(0, I)``."""
    x_adv = x + 0.001 * torch.randn_like(x)
    for _ in range(cfg.steps):
        x_adv.requires_grad_(True)
        grad, = torch.autograd.grad(kl_batchmean(model(x_adv), probs_clean), x_adv)
        x_adv = project(ascent_step(x_adv.detach(), grad, cfg.step_size, cfg.norm), x, cfg.epsilon, cfg.norm)
    return x_adv


def trades_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AttackConfig,
                attack_model: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``CE(f(x), y) + beta * KL(f(x) || f(x'))``; beta = 1/lambda."""
    attack_model = model if attack_model is None else attack_model
    model.eval()
    with torch.no_grad():
        probs_clean = F.softmax(attack_model(x).float(), dim=1)
    x_adv = trades_adversary(attack_model, x, probs_clean, cfg)
    model.train()
    logits = model(x)
    logits_adv = model(x_adv)
    loss = F.cross_entropy(logits.float(), y) + cfg.beta * kl_batchmean(
        logits_adv, F.softmax(logits.float(), dim=1))
    return loss, logits


def natural_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AttackConfig,
                 attack_model: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain cross-entropy on clean images (the accuracy-only baseline)."""
    model.train()
    logits = model(x)
    return F.cross_entropy(logits.float(), y), logits


def pgd_at_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AttackConfig,
                attack_model: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Madry et al. PGD adversarial training: cross-entropy on PGD-K examples from a random start."""
    model.eval()
    x_adv = pgd_attack(model if attack_model is None else attack_model, x, y, cfg.epsilon, cfg.step_size, cfg.steps,
                       cfg.norm, "ce", restarts=1)
    model.train()
    logits_adv = model(x_adv)
    return F.cross_entropy(logits_adv.float(), y), logits_adv


LOSSES: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "trades": trades_loss,
    "natural": natural_loss,
    "pgd_at": pgd_at_loss,
}
