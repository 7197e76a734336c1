"""Shared fixtures: a small learnable Fashion-MNIST-format data set in its exact IDX layout, and a tiny random CNN the
attack tests share."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzip-compressed IDX file (the format Fashion-MNIST ships in)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 images whose class is a bright horizontal band at row 2*label, plus noise."""
    images = rng.integers(0, 60, size=(len(labels), 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, 2 * label + 3: 2 * label + 6, 4:24] = 230
    return images


@pytest.fixture(scope="session")
def fmnist_dir(tmp_path_factory) -> Path:
    """A Fashion-MNIST folder (same file names and format) with 512 train and 128 test images."""
    root = tmp_path_factory.mktemp("fashion-mnist")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 512), ("t10k", 128)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", make_images(labels, rng))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """Servers and attacks under test share two cores with their clients: one torch thread each."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_cnn():
    """A random 4-class CNN on 12 x 12 x 3 images (a ``TorchModel``), the images and their labels, labelled with its
    own predictions (clean accuracy 1)."""
    from attacks import TorchModel  # here, so that the tests that attack nothing do not import the attack package
    from avc_common.images import ImageShape, ModelSpec

    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()
    model = TorchModel(net, ModelSpec(ImageShape(12, 12, 3), 4))
    images = np.random.default_rng(0).integers(0, 256, size=(6, 12, 12, 3), dtype=np.uint8)
    labels = model(images)
    assert len(np.unique(labels)) > 1
    return model, images, labels
