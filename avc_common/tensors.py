"""The pixel convention on the model's side: uint8 N x H x W x C images as the float N x C x H x W batch a model
takes, and back (docs/architecture.md "Pixel convention"). Every caller converts through these two functions."""
from __future__ import annotations

import numpy as np
import torch


def to_model_input(images: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 (or [0, 1] float) N x H x W x C images as the float32 N x C x H x W in [0, 1] a model takes.

    uint8 is moved to ``device`` before it is widened (a quarter of the bytes to copy). The
    result is a permuted view where no copy was needed: call ``.contiguous()`` if that matters.
    """
    if isinstance(images, np.ndarray) and not images.flags.writeable:  # torch warns on read-only memory
        images = images.copy()
    x = torch.as_tensor(images).to(device, non_blocking=True).permute(0, 3, 1, 2)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def to_hwc(x: torch.Tensor) -> np.ndarray:
    """A float N x C x H x W batch back as float32 N x H x W x C on the CPU (the attacks' layout)."""
    return x.detach().permute(0, 2, 3, 1).to("cpu", torch.float32).numpy()
