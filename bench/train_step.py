"""TRADES training-step throughput: ours against a straightforward reference-style step.

The reference style follows the published TRADES code: the inner loop recomputes the
clean prediction (with a graph) at every step, and the outer loss runs the clean batch
through the network twice. Both steps run on the same model, batch, K and device,
interleaved round by round so drift hits both alike; both losses are computed on the
same batch from the same weights and noise to confirm they agree.

    python bench/train_step.py                                  # small CNN, 28x28, CPU
    python bench/train_step.py --arch resnet18 --device cuda    # ResNet-18, 64x64

Ends with ``train-step speed-up ratio: X``.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from avc_common.atomic import atomic_write_text
from avc_common.cli import HelpFormatter
from training.models import MODELS, create_model
from training.trades import AttackConfig, trades_loss

SHAPES = {"small_cnn": (1, 28, 28, 10)}  # (channels, height, width, classes); ResNets: 3x64x64, 200


def reference_trades_loss(model: nn.Module, x_natural: torch.Tensor, y: torch.Tensor,
                          cfg: AttackConfig) -> torch.Tensor:
    """TRADES as the reference implementation writes it (L-inf), repeated work included."""
    criterion_kl = nn.KLDivLoss(reduction="sum")
    model.eval()
    x_adv = x_natural.detach() + 0.001 * torch.randn_like(x_natural)
    for _ in range(cfg.steps):
        x_adv.requires_grad_()
        loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x_natural), dim=1))
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + cfg.step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x_natural - cfg.epsilon), x_natural + cfg.epsilon)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()
    logits = model(x_natural)
    loss_natural = F.cross_entropy(logits, y)
    loss_robust = criterion_kl(F.log_softmax(model(x_adv), dim=1),
                               F.softmax(model(x_natural), dim=1)) / len(x_natural)
    return loss_natural + cfg.beta * loss_robust


def ours(model, x, y, cfg):
    return trades_loss(model, x, y, cfg)[0]


def make_step(loss_fn, model, optimizer, x, y, cfg, autocast):
    def step() -> None:
        with autocast():
            loss = loss_fn(model, x, y, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_rounds(steps: dict, device: torch.device, rounds: int, iters: int) -> dict[str, float]:
    """Median seconds per step of each entry, measured in interleaved rounds."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(iters):
                step()
            sync(device)
            times[name].append((time.perf_counter() - start) / iters)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--arch", choices=sorted(MODELS), default="small_cnn", help="network")
    p.add_argument("--batch-size", type=int, default=128, help="images per step")
    p.add_argument("--steps", type=int, default=10, help="TRADES inner steps K")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--iters", type=int, default=3, help="steps per round")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    p.add_argument("--fast", action="store_true",
                   help="also time ours with bf16 autocast + channels_last (+ torch.compile, see --compile)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the --fast step (default: on CUDA only; --no-compile times bf16 + "
                        "channels_last alone, in seconds where compiling takes minutes)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    channels, height, width, classes = SHAPES.get(args.arch, (3, 64, 64, 200))
    cfg = AttackConfig(epsilon=0.031, step_size=0.007, steps=args.steps, beta=6.0)
    torch.manual_seed(0)
    base = create_model(args.arch, classes, channels, [0.5] * channels, [0.25] * channels,
                        drop_rate=0.0).to(device)
    x = torch.rand(args.batch_size, channels, height, width, device=device)
    y = torch.randint(0, classes, (args.batch_size,), device=device)

    losses = {}
    for name, fn in (("reference", reference_trades_loss), ("ours", ours)):
        torch.manual_seed(1)
        losses[name] = fn(copy.deepcopy(base), x, y, cfg).item()
    gap = abs(losses["reference"] - losses["ours"])

    no_autocast = lambda: torch.autocast(device.type, enabled=False)  # noqa: E731
    steps = {}
    for name, fn in (("reference", reference_trades_loss), ("ours", ours)):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        steps[name] = make_step(fn, model, opt, x, y, cfg, no_autocast)
    if args.fast:
        model = copy.deepcopy(base).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        compiled = device.type == "cuda" if args.compile is None else args.compile
        forward = torch.compile(model) if compiled else model
        bf16 = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
        steps["ours+bf16+channels_last" + ("+compile" if compiled else "")] = make_step(
            ours, forward, opt, x.contiguous(memory_format=torch.channels_last), y, cfg, bf16)
    for step in steps.values():  # warm-up (and compilation)
        step()
        step()
    seconds = time_rounds(steps, device, args.rounds, args.iters)
    rate = {name: args.batch_size / s for name, s in seconds.items()}
    ratio = rate["ours"] / rate["reference"]

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"TRADES train step: {args.arch} {channels}x{height}x{width}, batch {args.batch_size}, "
          f"K={args.steps}, {device_name}, torch {torch.__version__}")
    for name, r in rate.items():
        print(f"  {name:<34} {r:9.1f} images/s  ({seconds[name] * 1e3:8.1f} ms/step)")
    print(f"  loss on the same batch: reference {losses['reference']:.6f}  ours {losses['ours']:.6f}  "
          f"|diff| {gap:.2e}")
    if args.json:
        atomic_write_text(args.json, json.dumps({
            "arch": args.arch, "batch_size": args.batch_size, "steps": args.steps, "device": device_name,
            "images_per_s": rate, "losses": losses, "ratio": ratio}, indent=2) + "\n")
    for name, r in rate.items():
        if name not in ("reference", "ours"):
            print(f"{name}/reference ratio: {r / rate['reference']:.2f}")
    same = gap <= 1e-4 * max(1.0, abs(losses["reference"]))
    print(f"same loss: {'yes' if same else 'NO'}")
    print(f"train-step speed-up ratio: {ratio:.2f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
