"""Random search directions: isotropic, or restricted to the low spatial frequencies of the image.

Adversarial directions of image classifiers concentrate in low frequencies (Guo et al.,
"Low Frequency Adversarial Perturbation", UAI 2019); sampling there makes each query
of a decision-based attack more informative. A fraction of 1 is plain isotropic Gaussian.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=8)
def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix (rows are frequencies), so its transpose is the inverse transform."""
    k = np.arange(n)[:, None]
    m = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m.astype(np.float32)


def sample_directions(rng: np.random.Generator, n: int, shape: tuple[int, int, int], freq: float = 1.0) -> np.ndarray:
    """``n`` unit-norm rows (flattened H x W x C) with Gaussian DCT coefficients in the lowest ``freq`` of each axis."""
    height, width, channels = shape
    if freq >= 1.0:
        v = rng.standard_normal((n, height * width * channels), dtype=np.float32)
    else:
        fh, fw = _low_frequencies(shape, freq)
        coef = rng.standard_normal((n, fh, fw, channels), dtype=np.float32)
        v = np.einsum("hi,nijc,jw->nhwc", dct_matrix(height)[:fh].T, coef, dct_matrix(width)[:fw], optimize=True)
        v = v.reshape(n, -1)
    return unit_rows(v)


def low_frequency_dims(shape: tuple[int, int, int], freq: float = 1.0) -> int:
    """How many dimensions :func:`sample_directions` draws from for images of ``shape`` (H, W, C)."""
    if freq >= 1.0:
        return int(np.prod(shape))
    fh, fw = _low_frequencies(shape, freq)
    return fh * fw * shape[2]


def _low_frequencies(shape: tuple[int, int, int], freq: float) -> tuple[int, int]:
    return max(1, round(freq * shape[0])), max(1, round(freq * shape[1]))


def unit_rows(v: np.ndarray) -> np.ndarray:
    """Each row scaled to unit L2 norm (an all-zero row stays zero rather than becoming NaN)."""
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
