"""Batched, on-device data augmentation presets.

Each image in a batch gets its own random affine transform, applied to the whole
batch with one ``affine_grid``/``grid_sample`` call on the training device; no
per-image Python runs. Presets:

- ``none``: no augmentation.
- ``standard``: random translation by up to H/16 pixels with zero fill (the same as a
  random crop after zero padding; exact integer shifts) and a horizontal flip.
- ``competition``: the expanded training set of the TRADES AVC entry, whose Tiny
  ImageNet set was grown to 550,000 images: every epoch draws 5.5 augmented views per
  training image (100,000 -> 550,000), each a random translation by up to H/8 pixels,
  horizontal flip, rotation within +-15 degrees, scaling in [0.9, 1.1] (bilinear),
  then brightness and contrast jitter of +-20%.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentPreset:
    """One preset: the per-image transform ranges and how many views an epoch draws per image."""

    name: str
    epoch_multiplier: float = 1.0
    shift_fraction: float = 0.0  # max translation as a fraction of image height
    flip: bool = False
    max_rotate_deg: float = 0.0
    scale_range: tuple[float, float] = (1.0, 1.0)
    jitter: float = 0.0  # brightness and contrast factors in [1 - jitter, 1 + jitter]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Augment a float N x C x H x W batch in [0, 1]; the result stays in [0, 1]."""
        if self.name == "none":
            return x
        n, _, h, w = x.shape
        smooth = self.max_rotate_deg > 0 or self.scale_range != (1.0, 1.0)
        theta = self._random_affine(n, h, w, x.device, integer_shift=not smooth)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid.to(x.dtype), mode="bilinear" if smooth else "nearest",
                            padding_mode="zeros", align_corners=False)
        if self.jitter > 0:
            out = self._color_jitter(out)
        return out

    def _random_affine(self, n: int, h: int, w: int, device: torch.device,
                       integer_shift: bool) -> torch.Tensor:
        """N x 2 x 3 matrices mapping output to input coordinates (normalised, [-1, 1])."""
        max_shift = round(self.shift_fraction * h)
        shift = torch.randint(-max_shift, max_shift + 1, (n, 2), device=device).float()
        if not integer_shift:
            shift = shift + torch.rand(n, 2, device=device) - 0.5
        angle = (torch.rand(n, device=device) * 2 - 1) * math.radians(self.max_rotate_deg)
        lo, hi = self.scale_range
        scale = lo + (hi - lo) * torch.rand(n, device=device)
        flip = torch.where(torch.rand(n, device=device) < 0.5, -1.0, 1.0) if self.flip \
            else torch.ones(n, device=device)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.zeros(n, 2, 3, device=device)
        theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
        theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
        theta[:, 0, 2] = 2 * shift[:, 0] / w
        theta[:, 1, 2] = 2 * shift[:, 1] / h
        return theta

    def _color_jitter(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        shape = (n, 1, 1, 1)
        brightness = 1 + (torch.rand(shape, device=x.device) * 2 - 1) * self.jitter
        contrast = 1 + (torch.rand(shape, device=x.device) * 2 - 1) * self.jitter
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return ((x * brightness - mean) * contrast + mean).clamp(0.0, 1.0)


AUGMENTATIONS: dict[str, AugmentPreset] = {
    "none": AugmentPreset("none"),
    "standard": AugmentPreset("standard", shift_fraction=1 / 16, flip=True),
    "competition": AugmentPreset("competition", epoch_multiplier=5.5, shift_fraction=1 / 8,
                                 flip=True, max_rotate_deg=15.0, scale_range=(0.9, 1.1),
                                 jitter=0.2),
}
