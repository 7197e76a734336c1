"""Datasets as in-memory uint8 arrays (docs/architecture.md "Pixel convention") behind one registry.

Every dataset loads into :class:`ImageDataset`: HWC uint8 train/test images, int64
labels, class names and the normalisation statistics the model bakes in. Epochs then
index memory; no per-image Python work happens during training.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avc_common.data.fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, load_fashion_split
from avc_common.data.tiny_imagenet import DatasetLayoutError, load_tiny_imagenet
from avc_common.images import ImageShape


@dataclass(frozen=True)
class ImageDataset:
    """A labelled train/test pair in the pixel convention, plus what a model needs to know."""

    name: str
    train_images: np.ndarray  # uint8 N x H x W x C
    train_labels: np.ndarray  # int64 N
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def input_shape(self) -> ImageShape:
        return ImageShape(*self.train_images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_fashion_mnist(root: str | Path | None = None, download: bool = False, proxy: bool = False) -> ImageDataset:
    """Fashion-MNIST from its IDX files (Debian's package by default; torchvision downloads if asked); with
    ``proxy``, as the 64x64x3 proxy of the competition's shape (:func:`avc_common.data.fashion_mnist.as_proxy`)."""
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    if download:
        from torchvision.datasets import FashionMNIST
        for train in (True, False):
            FashionMNIST(str(root), train=train, download=True)
    train_x, train_y = load_fashion_split(root, "train", proxy=proxy)
    test_x, test_y = load_fashion_split(root, "test", proxy=proxy)
    channels = train_x.shape[-1]
    return ImageDataset("fashion_mnist_64" if proxy else "fashion_mnist", train_x, train_y, test_x, test_y,
                        FASHION_MNIST_CLASSES, (0.2860,) * channels, (0.3530,) * channels)


def load_fashion_mnist_64(root: str | Path | None = None, download: bool = False) -> ImageDataset:
    """The 64x64x3 proxy of the competition's shape: Fashion-MNIST upsampled (bilinear), grey in three channels."""
    return load_fashion_mnist(root, download, proxy=True)


def load_tiny(root: str | Path | None = None, download: bool = False) -> ImageDataset:
    """Tiny ImageNet train and val splits (val serves as the labelled test set)."""
    if root is None:
        raise DatasetLayoutError("Tiny ImageNet has no default location: pass --data DIR "
                                 "(the folder holding wnids.txt, words.txt, train/ and val/)")
    if download:
        raise DatasetLayoutError("Tiny ImageNet cannot be downloaded by this tool; "
                                 "unpack tiny-imagenet-200.zip and pass --data DIR")
    train, val = load_tiny_imagenet(root, "train"), load_tiny_imagenet(root, "val")
    names = [f"{wnid} {name}" for wnid, name in zip(train.class_ids, train.class_names)]
    return ImageDataset("tiny_imagenet", train.images, train.labels, val.images, val.labels,
                        names, (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262))


DATASETS: dict[str, Callable[..., ImageDataset]] = {
    "fashion_mnist": load_fashion_mnist,
    "fashion_mnist_64": load_fashion_mnist_64,
    "tiny_imagenet": load_tiny,
}


def load_dataset(name: str, root: str | Path | None = None, download: bool = False) -> ImageDataset:
    """Load a registered dataset by name."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name](root, download=download)
