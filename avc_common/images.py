"""The pixel convention every package shares, in one place.

Images travel and are stored as uint8 N x H x W x C (HWC, the competition's format and the
bytes on the wire); models take float32 N x C x H x W in [0, 1] (normalisation lives inside
the exported model). :class:`ImageShape` is the one type for "what images a model takes",
and :func:`avc_common.tensors.to_model_input` is the one conversion from the first form to the second
(kept apart so that what needs only shapes, like the gRPC client and the health probe, never imports torch).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np


class ImageShape(NamedTuple):
    """One image as a uint8 HWC array: (height, width, channels); a plain tuple where one is expected."""

    height: int
    width: int
    channels: int

    @classmethod
    def from_mapping(cls, spec: Mapping[str, Any]) -> ImageShape:
        """The shape a manifest's ``input`` mapping gives (an artifact's, or crisp.yaml's; other keys ignored).

        Raises ``ValueError`` naming every field that is not a positive integer. Nothing is coerced: ``"28"``
        or ``28.0`` read from a file would otherwise compare unequal to 28 while printing the same.
        """
        if not isinstance(spec, Mapping):
            raise ValueError(f"input holds {spec!r} ({type(spec).__name__}); expected a mapping of height, width "
                             f"and channels, each a positive integer")
        wrong = []
        for name in cls._fields:
            if name not in spec:
                wrong.append(f"input.{name} is missing; expected height, width and channels, each a positive integer")
                continue
            value = spec[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                wrong.append(f"input.{name} holds {value!r} ({type(value).__name__}); expected a positive integer")
        if wrong:
            raise ValueError("; ".join(wrong))
        return cls(*(spec[name] for name in cls._fields))

    @property
    def nbytes(self) -> int:
        """Bytes of one image on the wire."""
        return self.height * self.width * self.channels

    def describe(self) -> str:
        """E.g. ``2352 = 28 x 28 x 1 uint8 HWC``: the form every error message uses."""
        return f"{self.nbytes} = {self.height} x {self.width} x {self.channels} uint8 HWC"

    def check(self, images: object) -> None:
        """Raise ``ValueError`` saying what was expected unless ``images`` is uint8 N x H x W x C of this shape."""
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.shape[1:] != tuple(self):
            got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
            raise ValueError(f"expected uint8 N x {' x '.join(map(str, self))} (HWC) images, got {got}")


def to_unit(images: np.ndarray) -> np.ndarray:
    """uint8 images as float32 in [0, 1]."""
    return np.asarray(images, dtype=np.float32) / np.float32(255.0)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Round float [0, 1] images to uint8 (uint8 input passes through unchanged)."""
    if x.dtype == np.uint8:
        return x
    return np.clip(np.rint(np.asarray(x, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


class ModelSpec(NamedTuple):
    """What a classifier takes and answers: its image shape and its number of classes."""

    shape: ImageShape
    num_classes: int
