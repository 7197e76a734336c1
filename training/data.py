"""Datasets as in-memory uint8 arrays (DESIGN.md pixel convention) behind one registry.

Every dataset loads into :class:`ImageDataset`: HWC uint8 train/test images, int64
labels, class names and the normalisation statistics the model bakes in. Epochs then
index memory; no per-image Python work happens during training.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from training.tiny_imagenet import DatasetLayoutError, load_tiny_imagenet

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


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
    def input_shape(self) -> tuple[int, int, int]:
        """(height, width, channels)."""
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX (MNIST-format) uint8 file, gzip-compressed or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise DatasetLayoutError(f"{path}: not a uint8 IDX file (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(bytearray(data), dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DatasetLayoutError(f"{path}: header says shape {shape} but holds {body.size} bytes")
    return body.reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz", root / "FashionMNIST" / "raw" / stem):
        if candidate.is_file():
            return candidate
    raise DatasetLayoutError(
        f"Fashion-MNIST file {stem}[.gz] not found in {root}. Install it with "
        f"`apt-get install dataset-fashion-mnist` (files land in {FASHION_MNIST_DIR}), "
        f"pass --data DIR holding the four IDX files, or add --download where a network exists")


def _fashion_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_stem, label_stem = _IDX_FILES[split]
    images, labels = read_idx(_find_idx(root, image_stem)), read_idx(_find_idx(root, label_stem))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetLayoutError(f"{root}: {split} images {images.shape} and labels {labels.shape} "
                                 f"do not pair up (expected N x 28 x 28 and N)")
    return images[..., None], labels.astype(np.int64)


def load_fashion_mnist(root: str | Path | None = None, download: bool = False) -> ImageDataset:
    """Fashion-MNIST from its IDX files (Debian's package by default; torchvision downloads if asked)."""
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    if download:
        from torchvision.datasets import FashionMNIST
        for train in (True, False):
            FashionMNIST(str(root), train=train, download=True)
    train_x, train_y = _fashion_split(root, "train")
    test_x, test_y = _fashion_split(root, "test")
    return ImageDataset("fashion_mnist", train_x, train_y, test_x, test_y,
                        FASHION_MNIST_CLASSES, (0.2860,), (0.3530,))


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
    "tiny_imagenet": load_tiny,
}


def load_dataset(name: str, root: str | Path | None = None, download: bool = False) -> ImageDataset:
    """Load a registered dataset by name."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name](root, download=download)
