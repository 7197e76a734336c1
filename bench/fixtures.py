"""Synthetic data sets in the exact published layouts, learnable per class: what the benchmarks train and score on.

The benchmarks need real shapes and real files (the loaders in ``avc_common/data/`` read them exactly
as they read the published sets) but no download, and a model trained on them for a few steps must
answer more than one class: an untrained network answers one class for everything, and a label-only
attack then finds no starting point. So each class has a look of its own (a colour and a sinusoidal
grating with its own orientation, frequency and phase) and each image adds Gaussian noise to it.

- :func:`write_tiny_imagenet`: ``wnids.txt``, ``words.txt``, ``train/<wnid>/images/*.JPEG`` (with
  ``train/<wnid>/<wnid>_boxes.txt``), ``val/images/*.JPEG`` and ``val/val_annotations.txt``
  (docs/architecture.md "Data"); the unlabelled ``test/`` split is left out, nothing reads it.
- :func:`write_fashion_mnist`: the four gzip-compressed IDX files, named as Fashion-MNIST ships them.

    python bench/fixtures.py tiny_imagenet /tmp/tiny-synthetic --per-class 64    # then train_tiny.py --data ...
    python bench/fixtures.py fashion_mnist /tmp/fmnist-synthetic
"""
from __future__ import annotations

import argparse
import gzip
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from avc_common.atomic import atomic_open, atomic_write_text
from avc_common.cli import HelpFormatter, non_negative_int, positive_int
from avc_common.data.fashion_mnist import FASHION_SHAPE

TINY_SHAPE = (64, 64, 3)
FASHION_CLASSES = 10
JPEG_QUALITY = 90  # the classes' gratings survive it; the published set's JPEGs are lossy too


def class_images(labels: np.ndarray, shape: tuple[int, int, int], seed: int, noise_seed: int | Sequence[int],
                 noise: float = 20.0) -> np.ndarray:
    """uint8 N x H x W x C images of ``labels``: each class's colour and grating (from ``seed``) plus noise.

    A class's look depends only on ``seed`` and the class, the noise on ``noise_seed``: a train
    and a val split written with the same ``seed`` and other noise seeds share the classes.
    """
    height, width, channels = shape
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    rng = np.random.default_rng(noise_seed)
    images = np.empty((len(labels), height, width, channels), dtype=np.uint8)
    for label in np.unique(labels):
        look = np.random.default_rng([seed, int(label)])
        colour = look.uniform(50, 205, channels)
        angle, frequency, phase = look.uniform(0, math.pi), look.uniform(1.5, 6.0), look.uniform(0, 2 * math.pi)
        grating = 45 * np.sin(2 * math.pi * frequency * (xx * math.cos(angle) + yy * math.sin(angle)) + phase)
        rows = np.flatnonzero(labels == label)
        pixels = colour + grating[None, :, :, None] + rng.normal(0, noise, (len(rows), height, width, channels))
        images[rows] = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return images


def _save_jpeg(path: Path, image: np.ndarray) -> None:
    Image.fromarray(image).save(path, quality=JPEG_QUALITY)


def write_tiny_imagenet(root: str | Path, classes: int = 200, per_class: int = 2, val_per_class: int = 1,
                        seed: int = 0) -> Path:
    """A Tiny ImageNet folder at ``root``: ``classes`` wnids, ``per_class`` training and ``val_per_class`` val
    images each, 64 x 64 RGB JPEGs. Val images cycle through the classes, so any few of them span many."""
    root = Path(root)
    wnids = [f"n{index + 1:08d}" for index in range(classes)]
    atomic_write_text(root / "wnids.txt", "".join(f"{wnid}\n" for wnid in wnids))
    atomic_write_text(root / "words.txt", "".join(f"{wnid}\tsynthetic class {index}, grating\n"
                                                  for index, wnid in enumerate(wnids)))
    box = f"0\t0\t{TINY_SHAPE[1] - 1}\t{TINY_SHAPE[0] - 1}"
    for label, wnid in enumerate(wnids):
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True, exist_ok=True)
        names = [f"{wnid}_{number}.JPEG" for number in range(per_class)]
        for name, image in zip(names, class_images(np.full(per_class, label), TINY_SHAPE, seed, [seed, 1, label])):
            _save_jpeg(folder / name, image)
        atomic_write_text(root / "train" / wnid / f"{wnid}_boxes.txt", "".join(f"{n}\t{box}\n" for n in names))
    labels = np.arange(classes * val_per_class) % classes
    (root / "val" / "images").mkdir(parents=True, exist_ok=True)
    for number, image in enumerate(class_images(labels, TINY_SHAPE, seed, [seed, 2])):
        _save_jpeg(root / "val" / "images" / f"val_{number}.JPEG", image)
    atomic_write_text(root / "val" / "val_annotations.txt", "".join(
        f"val_{number}.JPEG\t{wnids[label]}\t{box}\n" for number, label in enumerate(labels)))
    return root


def write_idx(path: Path, array: np.ndarray) -> None:
    """A uint8 array as a gzip-compressed IDX file (the format Fashion-MNIST ships in)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with atomic_open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_fashion_mnist(root: str | Path, per_class: int = 50, test_per_class: int = 10, seed: int = 0) -> Path:
    """A Fashion-MNIST folder at ``root``: ``per_class`` training and ``test_per_class`` test images of each of
    the 10 classes, 28 x 28 grey, labels cycling through the classes (any first few span them all)."""
    root = Path(root)
    for prefix, count, noise_seed in (("train", per_class, 1), ("t10k", test_per_class, 2)):
        labels = np.arange(FASHION_CLASSES * count) % FASHION_CLASSES
        images = class_images(labels, FASHION_SHAPE, seed, [seed, noise_seed])
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images[..., 0])
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("dataset", choices=("tiny_imagenet", "fashion_mnist"), help="the layout to write")
    p.add_argument("root", type=Path, help="the folder to write it to (train_tiny.py's --data)")
    p.add_argument("--classes", metavar="N", type=positive_int, default=200, help="tiny_imagenet: classes")
    p.add_argument("--per-class", metavar="N", type=positive_int, default=None,
                   help="training images per class (default: 2 for tiny_imagenet, 50 for fashion_mnist)")
    p.add_argument("--eval-per-class", metavar="N", type=positive_int, default=None,
                   help="val (test) images per class (default: 1 for tiny_imagenet, 10 for fashion_mnist)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seeds the classes' looks and the noise")
    args = p.parse_args(argv)
    if args.dataset == "tiny_imagenet":
        write_tiny_imagenet(args.root, args.classes, args.per_class or 2, args.eval_per_class or 1, args.seed)
    else:
        write_fashion_mnist(args.root, args.per_class or 50, args.eval_per_class or 10, args.seed)
    print(f"wrote {args.dataset} to {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
