"""Tiny ImageNet loader on a small fixture in the exact published folder layout."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avc_common.data.tiny_imagenet import DatasetLayoutError, TinyImageNetSplit, load_tiny_imagenet

WNIDS = ["n02124075", "n01443537", "n09999999"]  # wnids.txt order, deliberately not sorted
NAMES = ["Egyptian cat", "goldfish", "n09999999"]  # the last wnid is absent from words.txt
COLORS = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]  # by label
TRAIN_PER_CLASS = 4
GRAY_FILE = ("n01443537", 3, 90)  # (wnid, image number, gray level): saved in mode "L"
VAL_ANNOTATIONS = [(3, 0), (0, 1), (5, 2), (1, 2), (4, 1), (2, 0)]  # (val_<i>.JPEG, label), not in file order
TOL = 8  # JPEG is lossy


def _save(path: Path, color: tuple[int, int, int] | int, mode: str = "RGB", size: int = 64) -> None:
    Image.new(mode, (size, size), color).save(path, quality=95)


def _train_color(wnid: str, number: int) -> tuple[int, ...]:
    if (wnid, number) == GRAY_FILE[:2]:
        return (GRAY_FILE[2],) * 3
    return COLORS[WNIDS.index(wnid)]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "tiny-imagenet-200"
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (root / "words.txt").write_text(
        "n00001740\tentity\n"
        "n01443537\tgoldfish, Carassius auratus\n"
        "n02124075\tEgyptian cat\n"
        "n04067472\treel\n"
    )
    for wnid in WNIDS:
        images = root / "train" / wnid / "images"
        images.mkdir(parents=True)
        boxes = []
        for number in range(TRAIN_PER_CLASS):
            name = f"{wnid}_{number}.JPEG"
            if (wnid, number) == GRAY_FILE[:2]:
                _save(images / name, GRAY_FILE[2], mode="L")
            else:
                _save(images / name, _train_color(wnid, number))
            boxes.append(f"{name}\t0\t0\t63\t63")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("\n".join(boxes) + "\n")
    (root / "val" / "images").mkdir(parents=True)
    for number, label in VAL_ANNOTATIONS:
        _save(root / "val" / "images" / f"val_{number}.JPEG", COLORS[label])
    (root / "val" / "val_annotations.txt").write_text(
        "".join(f"val_{number}.JPEG\t{WNIDS[label]}\t0\t32\t44\t62\n" for number, label in VAL_ANNOTATIONS)
    )
    (root / "test" / "images").mkdir(parents=True)
    _save(root / "test" / "images" / "test_0.JPEG", (128, 128, 128))
    return root


@pytest.fixture
def open_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every PIL.Image.open call, to tell decoding from cache hits."""
    calls: list[str] = []
    real_open = Image.open

    def counting_open(path, *args, **kwargs):
        calls.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    return calls


def load(root: Path, split: str = "train", **kwargs) -> TinyImageNetSplit:
    return load_tiny_imagenet(root, split, progress=False, **kwargs)


def assert_mean_colors(images: np.ndarray, colors: list[tuple[int, ...]]) -> None:
    means = images.reshape(len(images), -1, 3).mean(axis=1)
    np.testing.assert_allclose(means, np.array(colors, dtype=float), atol=TOL)


def test_train_labels_follow_wnids_order_and_pixels_survive(root: Path) -> None:
    split = load(root)
    assert split.images.shape == (len(WNIDS) * TRAIN_PER_CLASS, 64, 64, 3)
    assert split.images.dtype == np.uint8 and split.labels.dtype == np.int64
    assert split.labels.tolist() == [label for label in range(len(WNIDS)) for _ in range(TRAIN_PER_CLASS)]
    assert split.class_ids == WNIDS
    assert split.class_names == NAMES
    assert_mean_colors(split.images, [_train_color(w, n) for w in WNIDS for n in range(TRAIN_PER_CLASS)])


def test_grayscale_image_becomes_three_equal_channels(root: Path) -> None:
    split = load(root)
    gray = split.images[WNIDS.index(GRAY_FILE[0]) * TRAIN_PER_CLASS + GRAY_FILE[1]]
    assert gray.shape == (64, 64, 3)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])


def test_val_labels_follow_annotations_in_sorted_file_order(root: Path) -> None:
    split = load(root, "val")
    expected = [label for _, label in sorted(VAL_ANNOTATIONS)]
    assert split.labels.tolist() == expected
    assert split.class_ids == WNIDS and split.class_names == NAMES
    assert_mean_colors(split.images, [COLORS[label] for label in expected])


def test_second_load_uses_cache(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load(root)
    assert {p.name for p in (root / ".uint8-cache").iterdir()} == {
        "train-images.npy", "train-labels.npy", "train-meta.json"
    }

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(Image, "open", no_decoding)
    second = load(root)
    assert np.array_equal(first.images, second.images) and np.array_equal(first.labels, second.labels)
    assert (second.class_ids, second.class_names) == (first.class_ids, first.class_names)


def test_custom_cache_dir(root: Path, tmp_path: Path, open_calls: list[str]) -> None:
    load(root, "val", cache_dir=tmp_path / "cache")
    load(root, "val", cache_dir=tmp_path / "cache")
    assert len(open_calls) == len(VAL_ANNOTATIONS)
    assert (tmp_path / "cache" / "val-meta.json").is_file() and not (root / ".uint8-cache").exists()


def test_added_image_invalidates_cache(root: Path, open_calls: list[str]) -> None:
    load(root)
    _save(root / "train" / WNIDS[2] / "images" / f"{WNIDS[2]}_9.JPEG", COLORS[0])
    open_calls.clear()
    split = load(root)
    assert len(open_calls) == len(WNIDS) * TRAIN_PER_CLASS + 1
    assert len(split.images) == len(WNIDS) * TRAIN_PER_CLASS + 1
    assert split.labels[-1] == 2
    assert_mean_colors(split.images[-1:], [COLORS[0]])


def test_changed_annotation_invalidates_cache(root: Path) -> None:
    load(root, "val")
    path = root / "val" / "val_annotations.txt"
    path.write_text(path.read_text().replace(f"val_3.JPEG\t{WNIDS[0]}", f"val_3.JPEG\t{WNIDS[1]}"))
    assert load(root, "val").labels[3] == 1


@pytest.mark.parametrize("victim", ["train-images.npy", "train-labels.npy", "train-meta.json"])
def test_corrupt_cache_file_triggers_rebuild(root: Path, open_calls: list[str], victim: str) -> None:
    first = load(root)
    (root / ".uint8-cache" / victim).write_bytes(b"\x93NUMPY garbage")
    open_calls.clear()
    second = load(root)
    assert len(open_calls) == len(first.images)
    assert np.array_equal(first.images, second.images)
    open_calls.clear()
    load(root)
    assert open_calls == []  # the rebuilt cache is valid again


def test_unwritable_cache_dir_warns_and_still_loads(root: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="cache"):
        split = load(root, "val", cache_dir=blocker / "cache")
    assert len(split.images) == len(VAL_ANNOTATIONS)


def test_bad_split_names_the_choices(root: Path) -> None:
    with pytest.raises(ValueError, match="train"):
        load(root, "test")


def _remove_wnids(root: Path) -> Path:
    (root / "wnids.txt").unlink()
    return root / "wnids.txt"


def _empty_wnids(root: Path) -> Path:
    (root / "wnids.txt").write_text("\n")
    return root / "wnids.txt"


def _duplicate_wnid(root: Path) -> Path:
    (root / "wnids.txt").write_text("\n".join(WNIDS + [WNIDS[0]]) + "\n")
    return root / "wnids.txt"


def _remove_train_images(root: Path) -> Path:
    shutil.rmtree(root / "train" / WNIDS[1] / "images")
    return root / "train" / WNIDS[1] / "images"


def _empty_train_images(root: Path) -> Path:
    for path in (root / "train" / WNIDS[1] / "images").iterdir():
        path.unlink()
    return root / "train" / WNIDS[1] / "images"


def _unknown_val_wnid(root: Path) -> Path:
    with open(root / "val" / "val_annotations.txt", "a") as f:
        f.write("val_0.JPEG\tn999\t0\t32\t44\t62\n")
    return root / "val" / "val_annotations.txt"


def _missing_val_file(root: Path) -> Path:
    with open(root / "val" / "val_annotations.txt", "a") as f:
        f.write(f"val_99.JPEG\t{WNIDS[0]}\t0\t32\t44\t62\n")
    return root / "val" / "images" / "val_99.JPEG"


def _wrong_size_image(root: Path) -> Path:
    path = root / "train" / WNIDS[0] / "images" / f"{WNIDS[0]}_1.JPEG"
    _save(path, COLORS[0], size=32)
    return path


@pytest.mark.parametrize(
    ("split", "break_layout", "message"),
    [
        ("train", _remove_wnids, "not found"),
        ("train", _empty_wnids, "found 0"),
        ("val", _duplicate_wnid, f"line 4: duplicate wnid '{WNIDS[0]}'"),
        ("train", _remove_train_images, "folder not found"),
        ("train", _empty_train_images, "no .JPEG files"),
        ("val", _unknown_val_wnid, "line 7: unknown wnid 'n999' (not in wnids.txt)"),
        ("val", _missing_val_file, "not found"),
        ("train", _wrong_size_image, "is 32x32, expected 64x64"),
    ],
)
def test_bad_layout_names_the_offending_path(root: Path, split: str, break_layout, message: str) -> None:
    offending = break_layout(root)
    with pytest.raises(DatasetLayoutError) as caught:
        load(root, split)
    assert str(offending) in str(caught.value) and message in str(caught.value)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="not found") as caught:
        load(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(caught.value)


def test_training_cli_runs_resnet18_on_tiny_imagenet_layout(root: Path, tmp_path: Path) -> None:
    """The full path a Tiny ImageNet user takes: layout -> cache -> ResNet-18 at 64x64 -> artifact."""
    from avc_common.artifact import load_artifact
    from training import train_tiny

    code = train_tiny.main(["--data", str(root), "--arch", "resnet18", "--epochs", "1", "--steps", "1",
                            "--batch-size", "8", "--augment", "competition", "--eval-images", "4",
                            "--eval-steps", "1", "--final-eval-images", "-1", "--output-dir",
                            str(tmp_path / "run"), "--no-progress"])
    assert code == 0
    manifest = load_artifact(tmp_path / "run" / "artifact").manifest
    assert manifest["input"] == {"height": 64, "width": 64, "channels": 3}
    assert manifest["dataset"] == "tiny_imagenet" and manifest["arch"] == "resnet18"
    assert manifest["class_names"][0].startswith(load(root).class_ids[0])
