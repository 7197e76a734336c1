"""Tiny ImageNet from its published folder layout, decoded once into a uint8 cache.

Layout (see docs/architecture.md "Data"): ``wnids.txt`` (class order: label i = line i),
``words.txt``, ``train/<wnid>/images/*.JPEG``, ``val/images/*.JPEG`` with
``val/val_annotations.txt``. Images come back HWC uint8 (docs/architecture.md "Pixel convention").
Pure numpy/PIL so data tools need no torch.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from avc_common.atomic import atomic_open

SPLITS = ("train", "val")
IMAGE_SIZE = 64
_CACHE_FORMAT_VERSION = 1
_DECODE_CHUNK = 64  # images per thread-pool task: small enough for a smooth progress bar


class DatasetLayoutError(ValueError):
    """The folder does not match the published layout; the message says what was expected where."""


@dataclass(frozen=True)
class TinyImageNetSplit:
    """One decoded split; labels index ``class_ids`` (wnids.txt order, as the models' outputs do)."""

    images: np.ndarray  # uint8 N x 64 x 64 x 3 (HWC)
    labels: np.ndarray  # int64 N
    class_ids: list[str]  # wnids in wnids.txt order
    class_names: list[str]  # first words.txt term per wnid, or the wnid if absent


def load_tiny_imagenet(
    root: str | Path,
    split: str,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> TinyImageNetSplit:
    """Load ``split`` ("train" or "val"), decoding JPEGs only when the cache is missing or stale.

    The cache (default ``ROOT/.uint8-cache``) is keyed by a stat-only fingerprint of the
    split's files and labels, so epochs start fast yet never see outdated data.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: dataset root folder not found")
    wnids = _read_wnids(root / "wnids.txt")
    names = _read_class_names(root / "words.txt", wnids)
    files, labels = (_list_train if split == "train" else _list_val)(root, wnids)
    meta = {
        "format_version": _CACHE_FORMAT_VERSION,
        "split": split,
        "num_files": len(files),
        "files_sha256": _fingerprint(root, files, labels),
        "wnids": wnids,
    }
    cache = Path(cache_dir) if cache_dir is not None else root / ".uint8-cache"
    cache_paths = tuple(cache / f"{split}-{part}" for part in ("images.npy", "labels.npy", "meta.json"))
    images = _load_cache(cache_paths, meta, labels)
    if images is None:
        images = _decode_all(files, progress, desc=f"decoding Tiny ImageNet {split}")
        _save_cache(cache_paths, meta, images, labels)
    return TinyImageNetSplit(images, labels, wnids, names)


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        raise DatasetLayoutError(f"{path}: file not found (part of the published layout)") from None


def _read_wnids(path: Path) -> list[str]:
    first_line: dict[str, int] = {}
    for number, line in enumerate(_read_lines(path), 1):
        wnid = line.strip()
        if wnid in first_line:
            raise DatasetLayoutError(
                f"{path} line {number}: duplicate wnid {wnid!r} (first on line {first_line[wnid]})"
            )
        if wnid:
            first_line[wnid] = number
    if not first_line:
        raise DatasetLayoutError(f"expected class ids (200 in the real set) in {path}, found 0")
    return list(first_line)


def _read_class_names(path: Path, wnids: list[str]) -> list[str]:
    first_terms = {}
    for line in _read_lines(path):
        wnid, _, words = line.partition("\t")
        first_terms[wnid.strip()] = words.split(",")[0].strip()
    return [first_terms.get(wnid) or wnid for wnid in wnids]


def _list_train(root: Path, wnids: list[str]) -> tuple[list[Path], np.ndarray]:
    files: list[Path] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        folder = root / "train" / wnid / "images"
        if not folder.is_dir():
            raise DatasetLayoutError(f"{folder}: folder not found (expected train/<wnid>/images for every wnid)")
        found = sorted(folder.glob("*.JPEG"))
        if not found:
            raise DatasetLayoutError(f"{folder}: no .JPEG files")
        files += found
        labels += [label] * len(found)
    return files, np.array(labels, dtype=np.int64)


def _list_val(root: Path, wnids: list[str]) -> tuple[list[Path], np.ndarray]:
    path = root / "val" / "val_annotations.txt"
    label_of = {wnid: label for label, wnid in enumerate(wnids)}
    labels_by_name: dict[str, int] = {}
    for number, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        fields = [field.strip() for field in line.split("\t")]
        if len(fields) < 2:
            raise DatasetLayoutError(f"{where}: expected 'filename<TAB>wnid<TAB>bbox...', got {line!r}")
        name, wnid = fields[:2]
        if wnid not in label_of:
            raise DatasetLayoutError(f"{where}: unknown wnid {wnid!r} (not in wnids.txt)")
        if name in labels_by_name:
            raise DatasetLayoutError(f"{where}: {name!r} is annotated twice")
        if not (root / "val" / "images" / name).is_file():
            raise DatasetLayoutError(f"{where}: {root / 'val' / 'images' / name} not found")
        labels_by_name[name] = label_of[wnid]
    if not labels_by_name:
        raise DatasetLayoutError(f"{path}: no annotations")
    names = sorted(labels_by_name)
    files = [root / "val" / "images" / name for name in names]
    return files, np.array([labels_by_name[name] for name in names], dtype=np.int64)


def _fingerprint(root: Path, files: list[Path], labels: np.ndarray) -> str:
    """Hash of relative path, size, mtime and label per file: stat only, no decoding."""
    digest = hashlib.sha256()
    for path, label in zip(files, labels.tolist()):
        stat = path.stat()
        relative = path.relative_to(root).as_posix()
        digest.update(f"{relative}\t{stat.st_size}\t{stat.st_mtime_ns}\t{label}\n".encode())
    return digest.hexdigest()


def _load_cache(paths: tuple[Path, ...], meta: dict, labels: np.ndarray) -> np.ndarray | None:
    """The cached images if the cache matches ``meta`` and ``labels``, else None (rebuild)."""
    images_path, labels_path, meta_path = paths
    try:
        if json.loads(meta_path.read_text()) != meta:
            return None
        images = np.load(images_path, mmap_mode=None, allow_pickle=False)
        cached_labels = np.load(labels_path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if images.dtype != np.uint8 or images.shape != (len(labels), IMAGE_SIZE, IMAGE_SIZE, 3):
        return None
    return images if np.array_equal(cached_labels, labels) else None


def _save_cache(paths: tuple[Path, ...], meta: dict, images: np.ndarray, labels: np.ndarray) -> None:
    images_path, labels_path, meta_path = paths
    try:
        meta_path.unlink(missing_ok=True)  # arrays change first; without meta they never count as valid
        for path, array in ((images_path, images), (labels_path, labels)):
            with atomic_open(path, "wb") as f:
                np.save(f, array)
        with atomic_open(meta_path, "w") as f:
            json.dump(meta, f)
    except OSError as error:
        warnings.warn(
            f"cannot write the decoded-image cache in {meta_path.parent} ({error}); not caching", stacklevel=3
        )


def _decode_all(files: list[Path], progress: bool, desc: str) -> np.ndarray:
    """Decode into one preallocated array with a thread pool (PIL releases the GIL while decoding)."""
    images = np.empty((len(files), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)

    def decode_chunk(start: int) -> int:
        chunk = files[start : start + _DECODE_CHUNK]
        for index, path in enumerate(chunk, start):
            images[index] = _decode(path)
        return len(chunk)

    with ThreadPoolExecutor(os.cpu_count()) as pool, tqdm(
        total=len(files), desc=desc, unit="img", disable=not progress
    ) as bar:
        futures = [pool.submit(decode_chunk, start) for start in range(0, len(files), _DECODE_CHUNK)]
        try:
            for future in futures:  # in order, so the first bad file reported is deterministic
                bar.update(future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return images


def _decode(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")  # some real images are grayscale
    except OSError as error:
        raise DatasetLayoutError(f"image {path}: cannot decode ({error})") from error
    if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
        raise DatasetLayoutError(f"image {path} is {rgb.width}x{rgb.height}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    return np.asarray(rgb)
