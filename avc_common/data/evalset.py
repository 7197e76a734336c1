"""Evaluation images in the competition's format: a folder of ``.npy`` uint8 H x W x C images
and ``labels.yml`` mapping each file name to its class index.

``labels.yml`` defines the set: the files it names, in its order; other files are ignored.
Every name must resolve inside the folder (no ``..``, absolute paths or links out) and appear
once. :func:`folder_problems` reports every unusable entry at once, so a folder is fixed in
one go; it reads only each ``.npy`` header, never unpickles, and says what a bad file holds.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from avc_common.problems import Problem
from avc_common.yaml_unique import DuplicateKeyError, load_yaml

LABELS_FILE = "labels.yml"


@dataclass(frozen=True)
class EvalSet:
    """Images (uint8 N x H x W x C), their file names, and their labels (None when unknown)."""

    names: list[str]
    images: np.ndarray
    labels: np.ndarray | None


def write_folder(folder: str | Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write images as ``00000.npy``, ... and their ``labels.yml``, the layout :func:`load_folder` reads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{i:05d}.npy" for i in range(len(images))]
    for name, image in zip(names, images):
        np.save(folder / name, np.ascontiguousarray(image, dtype=np.uint8))
    (folder / LABELS_FILE).write_text(labels_yaml(names, labels))
    return folder


def labels_yaml(names: Sequence[str], labels: Sequence[int] | np.ndarray) -> str:
    """The text of a ``labels.yml`` giving each file its label, in this order (the set's order when read back)."""
    return yaml.safe_dump({str(n): int(y) for n, y in zip(names, labels)}, sort_keys=False)


def fixture(shape: tuple[int, int, int], n: int = 32, seed: int = 0) -> EvalSet:
    """Seeded random images of the model's shape, for a check without an evaluation set (no labels)."""
    images = np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)
    return EvalSet([f"random-{i}" for i in range(n)], images, None)


def _listing(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _parse_labels(path: Path) -> Any:
    return load_yaml(path.read_text())


def _read_labels(path: Path) -> tuple[dict[Any, Any] | None, Problem | None]:
    fix = f"write {LABELS_FILE} as one `FILE.npy: LABEL` line per image"
    if not path.is_file():
        return None, Problem(str(path), "missing", fix)
    try:
        mapping = _parse_labels(path)
    except DuplicateKeyError as err:
        return None, Problem(str(path), f"names {err.key!r} twice (lines {err.lines[0]} and {err.lines[1]}); "
                             f"expected each file once", "keep one line per image, with its one label")
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        return None, Problem(str(path), f"not valid YAML: {err}", fix)
    if not isinstance(mapping, dict) or not mapping:
        return None, Problem(str(path), "must be a non-empty mapping of file name to label", fix)
    return mapping, None


_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _npy_problem(file: Path, shape: tuple[int, int, int]) -> str | None:
    """What ``file`` holds when it is not a whole uint8 ``shape`` .npy array (None when it is), from its header alone.

    Reading the header ourselves tells apart what ``np.load`` reports alike: it calls any file without the .npy
    magic "pickled data", which is as wrong for random bytes as it is for a text file.
    """
    try:
        with open(file, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
            except ValueError:
                return "not a .npy file: no NUMPY header"
            if version not in _HEADER_READERS:
                return f".npy format version {version[0]}.{version[1]}, expected 1.0 or 2.0 as np.save writes"
            try:
                found, _, dtype = _HEADER_READERS[version](f)
            except ValueError as err:
                return f"a damaged .npy header: {err}"
            data_bytes = file.stat().st_size - f.tell()
    except OSError as err:
        return f"unreadable: {err.strerror}"
    if dtype.hasobject:
        return "an object array: pickled Python data, never loaded"
    if dtype != np.uint8 or found != tuple(shape):
        return f"{dtype} {found}"
    needed = int(np.prod(found)) * dtype.itemsize
    if data_bytes < needed:
        return f"truncated: {data_bytes} of its {needed} bytes of pixels"
    return None


def folder_problems(folder: str | Path, shape: tuple[int, int, int], num_classes: int,
                    flag: str = "--images") -> list[Problem]:
    """Everything that keeps ``folder`` (passed as ``flag``) from being an evaluation set of this shape and classes."""
    folder = Path(folder)
    if not folder.is_dir():
        return [Problem(flag, f"{folder} is not a folder", f"pass a folder of .npy images with a {LABELS_FILE}")]
    labels_path = folder / LABELS_FILE
    mapping, problem = _read_labels(labels_path)
    if problem:
        return [problem]
    root = folder.resolve()
    outside, missing, bad_labels, bad_images = [], [], [], []
    for name, label in mapping.items():
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < num_classes:
            bad_labels.append(f"{name}: {label!r}")
        file = folder / str(name)
        if not file.resolve().is_relative_to(root):  # resolve() follows links: a link out is outside too
            outside.append(str(name))
        elif not file.is_file():
            missing.append(str(name))
        elif (got := _npy_problem(file, shape)) is not None:
            bad_images.append(f"{name} ({got})")
    problems = []
    if outside:
        problems.append(Problem(str(labels_path), f"names {len(outside)} file(s) outside {folder}: "
                                f"{_listing(outside)}", "put the images in the folder and name them relative to it "
                                "(no '..', absolute paths or links out of it)"))
    if missing:
        problems.append(Problem(str(labels_path), f"names {len(missing)} file(s) not in {folder}: {_listing(missing)}",
                                "add the files or remove their lines"))
    if bad_labels:
        problems.append(Problem(str(labels_path), f"{len(bad_labels)} label(s) not an integer in 0..{num_classes - 1}: "
                                f"{_listing(bad_labels)}", "give each image its class index"))
    if bad_images:
        problems.append(Problem(flag, f"{len(bad_images)} file(s) are not uint8 {' x '.join(map(str, shape))} "
                                f"(H x W x C) arrays: {_listing(bad_images)}",
                                "save each image with np.save(path, image) as uint8 HWC in the model's input shape"))
    return problems


def load_folder(folder: str | Path) -> EvalSet:
    """Load a folder that :func:`folder_problems` accepted."""
    folder = Path(folder)
    mapping = _parse_labels(folder / LABELS_FILE)
    names = [str(name) for name in mapping]
    images = np.stack([np.load(folder / name, allow_pickle=False) for name in names])
    return EvalSet(names, images, np.array(list(mapping.values()), dtype=np.int64))
