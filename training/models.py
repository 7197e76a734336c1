"""Model registry: one name -> constructor map, every model takes [0, 1] input.

Normalisation (per-dataset mean/std) is the first layer of every model, so the
exported graph, the server and the attacks all see plain ``[0, 1]`` pixels.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import timm
import torch
from torch import nn


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with the statistics stored as buffers."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SmallCNN(nn.Module):
    """The TRADES paper's MNIST network: 4 conv + 3 fully connected layers, for 28x28."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, drop_rate: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 32, 3), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 200), nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(200, 200), nn.ReLU(inplace=True),
            nn.Linear(200, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SmallCNN64(nn.Module):
    """A small CNN for 64x64 inputs (the Fashion-MNIST proxy of the competition's shape, ``fashion_mnist_64``).

    4 padded 3x3 convs (32/32/64/64) with a 2x2 max-pool after the first, second and fourth, then
    fully connected 4096-200-classes: about 28M multiply-adds an image, so the label-only attacks'
    hundreds of thousands of queries at 12,288 dimensions stay minutes on a CPU (a ResNet-18 takes
    hours). The proxy tests the attacks at the competition's dimension, not the architecture.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 8 * 8, 200), nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(200, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _timm_resnet_64(name: str) -> Callable[..., nn.Module]:
    """A timm ResNet whose stem keeps 64x64 resolution: 3x3 stride-1 conv, no max-pool.

    The ImageNet stem (7x7 stride 2 + max-pool) would shrink a 64x64 image to 16x16
    before the first block; like CIFAR ResNets, the small-image variant keeps it.
    """

    def build(num_classes: int, in_chans: int = 3, drop_rate: float = 0.0) -> nn.Module:
        net = timm.create_model(name, pretrained=False, num_classes=num_classes,
                                in_chans=in_chans, drop_rate=drop_rate)
        net.conv1 = nn.Conv2d(in_chans, net.conv1.out_channels, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
        return net

    return build


MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "small_cnn_64": SmallCNN64,
    "resnet18": _timm_resnet_64("resnet18"),
    "resnet50": _timm_resnet_64("resnet50"),
}


def create_model(name: str, num_classes: int, in_chans: int, mean: Sequence[float],
                 std: Sequence[float], **kwargs) -> nn.Sequential:
    """Build ``name`` from the registry behind a :class:`Normalize` layer."""
    if name not in MODELS:
        raise ValueError(f"unknown arch {name!r}; choose one of {sorted(MODELS)}")
    return nn.Sequential(Normalize(mean, std),
                         MODELS[name](num_classes=num_classes, in_chans=in_chans, **kwargs))
