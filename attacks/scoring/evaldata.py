"""The images a score is computed on: Fashion-MNIST test, Tiny ImageNet val, or a competition-format folder.

Every source comes back as a :class:`avc_common.data.evalset.EvalSet` checked against the
model's input shape and class count, then :func:`pick` selects the images to attack.
Any problem is an :class:`EvalDataError` whose message says what was expected where.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from attacks.access.label_only import LabelOnlyModel
from avc_common.data import evalset
from avc_common.data.evalset import EvalSet
from avc_common.data.fashion_mnist import FASHION_MNIST_DIR, load_fashion_split
from avc_common.data.tiny_imagenet import DatasetLayoutError, load_tiny_imagenet

# what a score's --data folder holds (--dataset)
DATASETS = ("fashion_mnist", "fashion_mnist_64", "tiny_imagenet", "folder")
SAMPLING = ("first", "random")


class EvalDataError(ValueError):
    """The evaluation data cannot be used with this model; the message names the flag and the fix."""


def load_eval_data(dataset: str, data: Path | None, shape: tuple[int, int, int], num_classes: int,
                   progress: bool = True) -> EvalSet:
    """The labelled images of ``dataset`` (one of :data:`DATASETS`) read from the folder ``data``.

    ``data`` may be None for Fashion-MNIST only (Debian's package folder; ``fashion_mnist_64`` is its 64x64x3
    proxy, :func:`avc_common.data.fashion_mnist.as_proxy`); Tiny ImageNet needs
    the folder holding ``wnids.txt`` and ``val/``, ``folder`` the competition-format folder.
    """
    if dataset == "folder":
        if data is None:
            raise EvalDataError("--dataset folder needs --data DIR: the .npy uint8 H x W x C images and labels.yml")
        problems = evalset.folder_problems(data, shape, num_classes, flag="--data")
        if problems:
            raise EvalDataError("\n".join(f"  {p}" for p in problems))
        return evalset.load_folder(data)
    try:
        if dataset in ("fashion_mnist", "fashion_mnist_64"):
            images, labels = load_fashion_split(data or FASHION_MNIST_DIR, "test", proxy=dataset == "fashion_mnist_64")
            names = [f"test-{i}" for i in range(len(images))]
        else:
            if data is None:
                raise EvalDataError("--dataset tiny_imagenet needs --data DIR: the folder holding wnids.txt, "
                                    "words.txt and val/ (images/ and val_annotations.txt)")
            split = load_tiny_imagenet(data, "val", progress=progress)
            images, labels = split.images, split.labels
            names = [f"val-{i}" for i in range(len(images))]
    except DatasetLayoutError as err:
        raise EvalDataError(f"--dataset {dataset}: {err}") from None
    if images.shape[1:] != shape:
        raise EvalDataError(f"--dataset {dataset}: its images are {' x '.join(map(str, images.shape[1:]))} but the "
                            f"model takes {' x '.join(map(str, shape))} (H x W x C); use the data the model was "
                            f"trained for")
    if labels.max(initial=0) >= num_classes:
        raise EvalDataError(f"--dataset {dataset}: labels go up to {labels.max()} but the model has {num_classes} "
                            f"classes")
    return EvalSet(names, images, labels)


def pick(count: int, n: int, sampling: str, seed: int) -> np.ndarray:
    """Indices (sorted) of ``count`` of ``n`` images: the first ones, or a seeded random choice."""
    if sampling not in SAMPLING:
        raise EvalDataError(f"--sample must be one of {SAMPLING}, got {sampling!r}")
    if not 1 <= count <= n:
        raise EvalDataError(f"--images {count}: the data holds {n} image(s); ask for 1 to {n}")
    if sampling == "first":
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))


def first_correct(model: LabelOnlyModel, images: np.ndarray, labels: np.ndarray, offset: int,
                  count: int) -> np.ndarray:
    """Indices of the first ``count`` images from ``offset`` that ``model`` classifies correctly (the benches' rule:
    an image the model already gets wrong has distance 0 and says nothing about an attack)."""
    found: list[np.ndarray] = []
    for start in range(offset, len(images), 1024):
        chunk = np.arange(start, min(start + 1024, len(images)))
        found.append(chunk[model(images[chunk]) == labels[chunk]])
        if sum(map(len, found)) >= count:
            break
    picked = np.concatenate(found)[:count] if found else np.empty(0, dtype=np.int64)
    if len(picked) < count:
        raise ValueError(f"only {len(picked)} correctly classified test images from index {offset}, "
                         f"{count} asked for")
    return picked
