"""Fashion-MNIST from its IDX files (Debian's ``dataset-fashion-mnist`` layout) as uint8 HWC arrays.

Here, beside the other dataset readers, so that training and the scorer read the same
files the same way without ``attacks/`` importing ``training/`` (docs/architecture.md "Data").
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from avc_common.data.tiny_imagenet import DatasetLayoutError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


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
        f"point --data (training) or --data-dir (scoring) at the folder holding the four IDX files, "
        f"or add --download to training where a network exists")


FASHION_SHAPE = (28, 28, 1)
PROXY_SHAPE = (64, 64, 3)  # the competition's input shape, for the 64x64x3 proxy (:func:`as_proxy`)


def as_proxy(images: np.ndarray, size: int = PROXY_SHAPE[0], chunk: int = 4096) -> np.ndarray:
    """Fashion-MNIST images (uint8 N x 28 x 28 x 1) as the 64x64x3 proxy: bilinear upsampling, grey replicated.

    The competition's images have 12,288 dimensions, Fashion-MNIST's 784; label-only attacks search the
    input space, so choices measured at 784 need checking at 12,288. This proxy has the competition's
    shape with a data set this machine holds, and its content is still 28 x 28 (as real images are
    smoother than their pixel count). Deterministic, so training and scoring see the same pixels.
    """
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for start in range(0, len(images), chunk):
        x = torch.from_numpy(images[start:start + chunk]).permute(0, 3, 1, 2).float()
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        out[start:start + chunk] = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def load_fashion_split(root: Path, split: str, proxy: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The ``split`` ("train" or "test") images (uint8 N x 28 x 28 x 1, or N x 64 x 64 x 3 with ``proxy``:
    :func:`as_proxy`) and labels (int64 N) in ``root``."""
    image_stem, label_stem = _IDX_FILES[split]
    images, labels = read_idx(_find_idx(root, image_stem)), read_idx(_find_idx(root, label_stem))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetLayoutError(f"{root}: {split} images {images.shape} and labels {labels.shape} "
                                 f"do not pair up (expected N x 28 x 28 and N)")
    images = images[..., None]
    return (as_proxy(images) if proxy else images), labels.astype(np.int64)
