"""Fashion-MNIST IDX loading and the batched augmentation presets."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from avc_common.data.fashion_mnist import read_idx
from avc_common.data.tiny_imagenet import DatasetLayoutError
from training.augment import AUGMENTATIONS
from training.data import load_dataset


def test_fashion_mnist_fixture_loads_hwc_uint8(fmnist_dir):
    data = load_dataset("fashion_mnist", fmnist_dir)
    assert data.train_images.shape == (512, 28, 28, 1) and data.train_images.dtype == np.uint8
    assert data.test_labels.dtype == np.int64 and data.num_classes == 10
    assert data.input_shape == (28, 28, 1)
    # the fixture marks the class with a bright band at row 2*label+3
    rows = data.train_images[:, :, 10, 0].argmax(1)
    assert np.array_equal(rows, 2 * data.train_labels + 3)


def test_idx_reader_reads_plain_and_rejects_garbage(tmp_path, fmnist_dir):
    plain = tmp_path / "labels"
    plain.write_bytes(gzip.decompress((fmnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    assert read_idx(plain).shape == (128,)
    (tmp_path / "bad").write_bytes(b"\x12\x34\x56\x78" + bytes(10))
    with pytest.raises(DatasetLayoutError, match="bad magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + (100).to_bytes(4, "big") + bytes(10))
    with pytest.raises(DatasetLayoutError, match=r"shape \(100,\) but holds 10 bytes"):
        read_idx(tmp_path / "short")


def test_unknown_dataset_names_the_choices():
    with pytest.raises(ValueError, match="fashion_mnist"):
        load_dataset("cifar10")


def test_standard_preset_shifts_and_flips_whole_pixels():
    torch.manual_seed(0)
    x = torch.rand(256, 3, 64, 64)
    out = AUGMENTATIONS["standard"](x)
    assert out.shape == x.shape
    values = set(x.flatten().tolist()) | {0.0}
    assert set(out[:8].flatten().tolist()) <= values  # exact integer shifts, zero fill
    assert not torch.equal(out, x)
    # each image is its own translation (or mirror) of the input: per-image parameters
    changed = (out != x).flatten(1).any(1)
    assert 0.5 < changed.float().mean() <= 1.0


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_presets_keep_pixel_range_and_device(name):
    x = torch.rand(32, 1, 28, 28)
    out = AUGMENTATIONS[name](x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert AUGMENTATIONS["competition"].epoch_multiplier * 100_000 == 550_000
