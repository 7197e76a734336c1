"""The training losses: TRADES' threat model, its reduction to CE, and agreement with the reference."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench import train_step
from training.models import create_model
from training.pgd import pgd_attack, project
from training.trades import LOSSES, AttackConfig, trades_adversary, trades_loss


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("small_cnn", 10, 1, [0.5], [0.25], drop_rate=0.0)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 1, 28, 28, generator=g)
    x[:4] = 0.0  # images on the pixel box's edge: projection onto [0, 1] must bite
    x[4:8] = 1.0
    return x, torch.randint(0, 10, (16,), generator=g)


@pytest.mark.parametrize("norm,eps,step", [("linf", 0.1, 0.04), ("l2", 1.5, 0.5)])
def test_trades_adversary_stays_in_eps_ball_and_pixel_box(model, batch, norm, eps, step):
    x, _ = batch
    model.eval()
    with torch.no_grad():
        probs = F.softmax(model(x), 1)
    x_adv = trades_adversary(model, x, probs, AttackConfig(eps, step, 8, 6.0, norm))
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert size.max() > 0.9 * eps  # the ascent really moved to the ball's edge
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


def test_trades_adversary_increases_kl(model, batch):
    x, _ = batch
    model.eval()
    with torch.no_grad():
        probs = F.softmax(model(x), 1)
    kl = lambda z: F.kl_div(F.log_softmax(model(z), 1), probs, reduction="batchmean").item()  # noqa: E731
    x_adv = trades_adversary(model, x, probs, AttackConfig(0.1, 0.02, 10, 6.0))
    assert kl(x_adv) > 10 * kl(x + 0.001 * torch.randn_like(x))


def test_beta_zero_is_cross_entropy(model, batch):
    x, y = batch
    loss, _ = trades_loss(model, x, y, AttackConfig(beta=0.0))
    assert torch.allclose(loss, F.cross_entropy(model(x), y))
    assert model.training


def test_trades_matches_reference_implementation(model, batch):
    """Same weights, batch and noise: our deduplicated loss equals the reference-style one."""
    x, y = batch
    cfg = AttackConfig(0.1, 0.02, 5, 6.0)
    torch.manual_seed(3)
    ours, _ = trades_loss(model, x, y, cfg)
    torch.manual_seed(3)
    reference = train_step.reference_trades_loss(model, x, y, cfg)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    g_ours = torch.autograd.grad(ours, list(model.parameters()))
    g_ref = torch.autograd.grad(reference, list(model.parameters()))
    for a, b in zip(g_ours, g_ref):
        assert torch.allclose(a, b, atol=1e-6)


def test_trades_inner_loop_computes_no_weight_gradients(model, batch):
    x, y = batch
    trades_loss(model, x, y, AttackConfig(steps=3))
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_trains_the_model(model, batch, name):
    x, y = batch
    loss, logits = LOSSES[name](model, x, y, AttackConfig(0.1, 0.02, 2, 6.0))
    loss.backward()
    assert logits.shape == (16, 10) and torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 1.0)])
def test_pgd_attack_respects_threat_model_and_fools(batch, norm, eps):
    x, _ = batch
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    torch.nn.init.normal_(model[1].weight, std=0.05)
    model.eval()
    with torch.no_grad():
        y = model(x).argmax(1)  # the model's own labels: all correct before the attack
    x_adv = pgd_attack(model, x, y, eps, eps / 4, 20, norm, "cw", restarts=2)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert (model(x_adv).argmax(1) != y).float().mean() > 0.5


def test_project_rejects_unknown_norm(batch):
    with pytest.raises(ValueError, match="linf"):
        project(batch[0], batch[0], 0.1, "l1")
