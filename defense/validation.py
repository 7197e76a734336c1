"""Checking a Predict request against the model's input shape, with errors a client can act on.

Pure functions over plain bytes: the servicer maps :class:`RequestError` onto a gRPC
status, and tests exercise every rule without a network.
"""
from __future__ import annotations

from collections.abc import Sequence

import grpc
import numpy as np

from avc_common.images import ImageShape


class RequestError(Exception):
    """A request the server refuses: a gRPC status code and a message that says what was expected."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def decode_images(images: Sequence[bytes], spec: ImageShape, max_images: int) -> np.ndarray:
    """Check count and byte length of every image; return them as a writable uint8 N x H x W x C array."""
    if not images:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"empty request: send 1 to {max_images} images of {spec.describe()} bytes each")
    if len(images) > max_images:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{len(images)} images in one request; at most {max_images} "
                           f"(each {spec.describe()} bytes): split the batch")
    out = np.empty((len(images), *spec), dtype=np.uint8)
    flat = out.reshape(len(images), spec.nbytes)
    for i, data in enumerate(images):
        if len(data) != spec.nbytes:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"image {i} has {len(data)} bytes; expected {spec.describe()}")
        flat[i] = np.frombuffer(data, dtype=np.uint8)
    return out


def max_message_bytes(spec: ImageShape, max_images: int) -> int:
    """The gRPC receive limit: room for one image more than allowed, so that a request just over
    the count still reaches :func:`decode_images` and gets its explanatory INVALID_ARGUMENT,
    while anything far larger is refused by gRPC itself (RESOURCE_EXHAUSTED) before it is buffered.
    """
    per_image = spec.nbytes + 16  # field tag + length varint, generously
    return (max_images + 1) * per_image + 1024
