"""Fashion-MNIST IDX loading, the batched augmentation presets, and competition-format evaluation folders."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import make_artifact

from attacks.scoring import cli as score_cli
from avc_common.data.evalset import folder_problems, write_folder
from avc_common.data.fashion_mnist import read_idx
from avc_common.data.tiny_imagenet import DatasetLayoutError
from training.augment import AUGMENTATIONS
from training.data import load_dataset
from training.models import create_model


def test_fashion_mnist_fixture_loads_hwc_uint8(fmnist_dir):
    data = load_dataset("fashion_mnist", fmnist_dir)
    assert data.train_images.shape == (512, 28, 28, 1) and data.train_images.dtype == np.uint8
    assert data.test_labels.dtype == np.int64 and data.num_classes == 10
    assert data.input_shape == (28, 28, 1)
    # the fixture marks the class with a bright band at row 2*label+3
    rows = data.train_images[:, :, 10, 0].argmax(1)
    assert np.array_equal(rows, 2 * data.train_labels + 3)


def test_the_64x64x3_proxy_is_the_same_images_upsampled_and_a_small_cnn_takes_it(fmnist_dir):
    """The proxy of the competition's shape: each grey image bilinearly upsampled, in three equal channels."""
    small, proxy = load_dataset("fashion_mnist", fmnist_dir), load_dataset("fashion_mnist_64", fmnist_dir)
    assert proxy.input_shape == (64, 64, 3) and proxy.train_images.dtype == np.uint8 and len(proxy.mean) == 3
    assert np.array_equal(proxy.train_labels, small.train_labels)
    assert np.array_equal(proxy.test_images[..., 0], proxy.test_images[..., 2])
    rows = proxy.train_images[:, :, 32, 0].argmax(1)  # the class's bright band (row 2*label+3), scaled by 64/28
    assert np.all(np.abs(rows - (2 * small.train_labels + 3.5) * 64 / 28) <= 1.5)
    net = create_model("small_cnn_64", 10, 3, proxy.mean, proxy.std)
    assert net(torch.rand(2, 3, 64, 64)).shape == (2, 10)


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


@pytest.fixture
def eval_folders(tmp_path):
    """An evaluation folder ``set`` (00000.npy .. 00002.npy, labelled 0, 1, 2) beside another one, ``other``."""
    images = np.zeros((3, 28, 28, 1), dtype=np.uint8)
    return write_folder(tmp_path / "set", images, [0, 1, 2]), write_folder(tmp_path / "other", images, [0, 1, 2])


def _problems(folder: Path, labels: str) -> str:
    (folder / "labels.yml").write_text(labels)
    return "\n".join(str(p) for p in folder_problems(folder, (28, 28, 1), 10))


def test_labels_may_only_name_files_inside_the_folder(eval_folders):
    folder, other = eval_folders
    (folder / "link.npy").symlink_to(other / "00000.npy")
    found = _problems(folder, f"00000.npy: 0\n../other/00001.npy: 1\n{other / '00002.npy'}: 2\nlink.npy: 1\n")
    assert f"names 3 file(s) outside {folder}: ../other/00001.npy, {other / '00002.npy'}, link.npy" in found
    (folder / "inner.npy").symlink_to(folder / "00001.npy")  # a link that stays inside is an ordinary file
    assert _problems(folder, "00000.npy: 0\ninner.npy: 1\n") == ""


def test_a_file_named_twice_in_labels_is_an_error_naming_it(eval_folders):
    folder, _ = eval_folders
    found = _problems(folder, "00000.npy: 0\n00001.npy: 1\n00000.npy: 5\n")
    assert "names '00000.npy' twice (lines 1 and 3); expected each file once" in found


def test_a_bad_npy_file_says_what_it_holds(eval_folders):
    folder, _ = eval_folders
    (folder / "random.npy").write_bytes(np.random.default_rng(0).bytes(900))
    np.save(folder / "float.npy", np.zeros((28, 28, 1)))
    np.save(folder / "object.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (folder / "short.npy").write_bytes((folder / "00001.npy").read_bytes()[:300])
    np.save(folder / "rgb.npy", np.zeros((64, 64, 3), dtype=np.uint8))
    found = _problems(folder, "00000.npy: 0\n" + "".join(f"{n}.npy: 1\n" for n in
                                                          ("random", "float", "object", "short", "rgb")))
    assert "5 file(s) are not uint8 28 x 28 x 1 (H x W x C) arrays" in found
    for part in ("random.npy (not a .npy file: no NUMPY header)", "float.npy (float64 (28, 28, 1))",
                 "object.npy (an object array: pickled Python data, never loaded)",
                 f"short.npy (truncated: {300 - 128} of its 784 bytes of pixels)",
                 "rgb.npy (uint8 (64, 64, 3))"):
        assert part in found


def test_score_exits_2_for_a_folder_reaching_outside_itself(eval_folders, tmp_path, capsys):
    folder, _ = eval_folders
    (folder / "labels.yml").write_text("00000.npy: 0\n../other/00001.npy: 1\n")
    artifact = make_artifact(tmp_path / "artifact")
    argv = ["--model", str(artifact), "--data", str(folder), "--output", str(tmp_path / "out"),
            "--attacks", "contrast", "--no-progress"]
    assert score_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "names 1 file(s) outside" in err and "Traceback" not in err
