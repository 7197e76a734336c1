"""The uint8 pixel lattice every query lands on (the pixel convention: :mod:`avc_common.images`).

Attacks think in float ``[0, 1]`` but the model only ever sees ``uint8``: rounding
here, in one place, lets an attack know exactly which image it is asking about, and
lets searches stop at the lattice's resolution instead of refining below it.
"""
from __future__ import annotations

import numpy as np

from avc_common.images import to_uint8, to_unit

STEP = 1.0 / 255.0  # one uint8 level in the [0, 1] scale


def quantize(x: np.ndarray) -> np.ndarray:
    """The float32 image the model will actually see when ``x`` is sent: clipped and rounded to the lattice."""
    return to_unit(to_uint8(x))


def l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row L2 distance between two batches (any shape after the first axis), in float64."""
    diff = np.asarray(a, dtype=np.float64).reshape(len(a), -1) - np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    return np.sqrt(np.einsum("ij,ij->i", diff, diff))
