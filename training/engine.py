"""The training epoch and the white-box accuracy evaluation, free of CLI concerns."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from avc_common.tensors import to_model_input
from training.augment import AugmentPreset
from training.pgd import pgd_attack
from training.trades import AttackConfig


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors run: device, bf16 autocast, channels_last memory format."""

    device: torch.device
    bf16: bool = False
    channels_last: bool = False

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def to_input(self, images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 N x H x W x C (any device) -> float N x C x H x W in [0, 1] on the device."""
        x = to_model_input(images_u8, self.device)
        return x.contiguous(memory_format=torch.channels_last if self.channels_last
                            else torch.contiguous_format)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: CUDA, or a CPU whose oneDNN has bf16 kernels (AVX512-BF16, AMX).

    Elsewhere (an AVX2-only CPU) autocast emulates bf16 and a training step runs about ten times slower than in
    fp32 (docs/training.md "Precision on a CPU"), so bf16 is only worth asking for where this holds.
    """
    if device.type == "cuda":
        return True
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def batches(images: torch.Tensor, labels: torch.Tensor, order: list[int] | torch.Tensor,
            batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(uint8 images, labels)`` in ``order``; indices past N wrap (epochs of several views)."""
    order = torch.as_tensor(order, dtype=torch.long) % len(images)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield images[idx], labels[idx]


def train_one_epoch(model: nn.Module, attack_model: nn.Module, loss_fn: Callable, cfg: AttackConfig,
                    optimizer: torch.optim.Optimizer, scheduler, augment: AugmentPreset,
                    data: Iterator[tuple[torch.Tensor, torch.Tensor]], num_batches: int,
                    rt: Runtime, desc: str, progress: bool = True) -> dict[str, float]:
    """One pass over ``data``: loss, optimiser and per-iteration LR step; returns mean loss, accuracy, img/s."""
    total_loss = torch.zeros((), device=rt.device)
    correct = torch.zeros((), device=rt.device, dtype=torch.long)
    seen = 0
    start = time.perf_counter()
    bar = tqdm(data, total=num_batches, desc=desc, disable=not progress, leave=False)
    for step, (images, labels) in enumerate(bar):
        x, y = augment(rt.to_input(images)), labels.to(rt.device, non_blocking=True)
        with rt.autocast():
            loss, logits = loss_fn(model, x, y, cfg, attack_model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.detach().float() * len(y)  # device-side sums: no sync per step
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        if progress and step % 20 == 0:
            bar.set_postfix(loss=f"{total_loss.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}",
                            img_s=f"{seen / (time.perf_counter() - start):.0f}")
    elapsed = time.perf_counter() - start
    seen = max(seen, 1)
    return {"train_loss": total_loss.item() / seen, "train_accuracy": correct.item() / seen,
            "train_images_per_s": seen / elapsed, "train_seconds": elapsed}


def evaluate_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      rt: Runtime, batch_size: int, epsilon: float, step_size: float,
                      steps: int, norm: str = "linf", losses: tuple[str, ...] = ("ce",),
                      restarts: int = 1, progress: bool = True, desc: str = "eval") -> dict[str, float]:
    """Clean accuracy and accuracy under PGD-``steps`` (random start, ``restarts`` tries) in fp32.

    With several attack ``losses``, ``pgd_accuracy`` is the per-image worst case over them
    and ``pgd_accuracy_<loss>`` each one's own.
    """
    model.eval()
    fp32 = Runtime(rt.device, bf16=False, channels_last=rt.channels_last)
    clean = torch.zeros((), dtype=torch.long)
    robust = {name: torch.zeros((), dtype=torch.long) for name in (*losses, "all")}
    order = torch.arange(len(images))
    for images_u8, y in tqdm(batches(images, labels, order, batch_size), desc=desc, leave=False,
                             total=-(-len(images) // batch_size), disable=not progress):
        x, y = fp32.to_input(images_u8), y.to(rt.device)
        with torch.no_grad():
            correct = model(x).argmax(1) == y
        clean += correct.sum().cpu()
        if steps <= 0:
            continue
        for name in losses:
            x_adv = pgd_attack(model, x, y, epsilon, step_size, steps, norm, name, restarts)
            with torch.no_grad():
                survived = model(x_adv).argmax(1) == y
            robust[name] += survived.sum().cpu()
            correct &= survived
        robust["all"] += correct.sum().cpu()
    n = max(len(images), 1)
    result = {"clean_accuracy": clean.item() / n}
    if steps > 0:
        result["pgd_accuracy"] = robust["all"].item() / n
        if len(losses) > 1:
            result.update({f"pgd_accuracy_{name}": robust[name].item() / n for name in losses})
    return result
