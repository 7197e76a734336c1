"""The uint8 pixel lattice every query lands on (DESIGN.md "Pixel convention").

Attacks think in float ``[0, 1]`` but the model only ever sees ``uint8``: rounding
here, in one place, lets an attack know exactly which image it is asking about, and
lets searches stop at the lattice's resolution instead of refining below it.
"""
from __future__ import annotations

import numpy as np

STEP = 1.0 / 255.0  # one uint8 level in the [0, 1] scale


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Round float ``[0, 1]`` images to uint8 (uint8 input passes through unchanged)."""
    if x.dtype == np.uint8:
        return x
    return np.clip(np.rint(np.asarray(x, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def to_unit(x: np.ndarray) -> np.ndarray:
    """uint8 images as float32 in ``[0, 1]``."""
    return np.asarray(x, dtype=np.float32) / np.float32(255.0)


def quantize(x: np.ndarray) -> np.ndarray:
    """The float32 image the model will actually see when ``x`` is sent: clipped and rounded to the lattice."""
    return to_unit(to_uint8(x))


def l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row L2 distance between two batches (any shape after the first axis), in float64."""
    diff = np.asarray(a, dtype=np.float64).reshape(len(a), -1) - np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    return np.sqrt(np.einsum("ij,ij->i", diff, diff))
