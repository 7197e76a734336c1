"""What the attack benches attack: named model artifacts, their test images, and the surrogates that fit each.

Two shapes, so that an attack chosen on one is checked on the other: Fashion-MNIST as published
(28x28x1, 784 dimensions) and its 64x64x3 proxy of the competition's shape (12,288 dimensions,
:func:`avc_common.data.fashion_mnist.as_proxy`). A model's test images are read at its own input
shape, and surrogate attacks get only the surrogates that take that shape, so one ``--surrogates``
list serves models of both.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np

from avc_common.artifact import ArtifactError, read_manifest
from avc_common.cli import HelpFormatter
from avc_common.data.fashion_mnist import FASHION_SHAPE, PROXY_SHAPE, load_fashion_split
from avc_common.images import ImageShape

ROOT = Path(__file__).resolve().parent.parent
# name -> artifact folder, as docs/benchmarks.md trains them
MODELS = {"natural": ROOT / "runs/fmnist-natural/artifact", "trades": ROOT / "runs/fmnist-trades/artifact",
          "natural-64": ROOT / "runs/fmnist64-natural/artifact", "trades-64": ROOT / "runs/fmnist64-trades/artifact"}


def parse_models(text: str) -> dict[str, Path]:
    """``natural,trades`` (names of :data:`MODELS`) or ``NAME=ARTIFACT_DIR`` entries; ValueError on an unknown name,
    an empty list or a folder without a model artifact."""
    models = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        name, _, path = entry.partition("=")
        if not path and name not in MODELS:
            raise ValueError(f"unknown model {name!r}: use one of {', '.join(MODELS)} or NAME=ARTIFACT_DIR")
        models[name] = Path(path) if path else MODELS[name]
    if not models:
        raise ValueError("no models given")
    if missing := [f"{name} ({path})" for name, path in models.items() if not (path / "manifest.json").is_file()]:
        raise ValueError(f"no model artifact at {', '.join(missing)}: train it (docs/benchmarks.md) or pass "
                         f"NAME=ARTIFACT_DIR")
    return models


def input_shape(artifact: str | Path) -> ImageShape:
    """The images an artifact takes, from its (checked) manifest; each folder's manifest is read and its files
    hashed once per process, however many models ask which surrogates fit them."""
    return _input_shape(Path(artifact).resolve())


@cache
def _input_shape(artifact: Path) -> ImageShape:
    return ImageShape.from_mapping(read_manifest(artifact)["input"])


@cache
def test_split(root: Path, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The Fashion-MNIST test images at ``shape`` (as published, or the 64x64x3 proxy) and their labels."""
    if tuple(shape) not in (FASHION_SHAPE, PROXY_SHAPE):
        raise ValueError(f"the benches read Fashion-MNIST at {FASHION_SHAPE} or its proxy {PROXY_SHAPE}; "
                         f"this model takes {tuple(shape)}")
    return load_fashion_split(root, "test", proxy=tuple(shape) == PROXY_SHAPE)


def fitting(surrogates: Sequence[str | Path], shape: tuple[int, int, int]) -> list[str]:
    """The surrogate artifact folders that take ``shape`` images, in order."""
    return [str(s) for s in surrogates if input_shape(s) == tuple(shape)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter,
                                epilog="Exit codes: 0 every model is trained, 1 some are missing.")
    p.parse_args(argv)
    missing = 0
    for name, path in MODELS.items():
        try:
            manifest = read_manifest(path)
        except ArtifactError as err:
            missing += 1
            print(f"{name:11} missing: {err}")
            continue
        metrics = manifest["metrics"]
        print(f"{name:11} {path.relative_to(ROOT)}: {' x '.join(map(str, input_shape(path)))}, "
              f"{manifest['training'].get('loss')}, clean {metrics.get('clean_accuracy', float('nan')):.1%}, "
              f"PGD {metrics.get('pgd_accuracy', float('nan')):.1%}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
