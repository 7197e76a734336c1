"""How much the server takes on at once: the defaults of ``--max-concurrent-calls`` and ``--max-queued-images``.

Both caps keep the server inside its memory limit (``--memory-mib``; the submission declares
``resources.memory: 4Gi`` in ``crisp.yaml``) however many clients call at once. The limit is shared out:

- half for the process itself: torch, the model, a forward's activations at ``--max-batch-size``,
  gRPC and Python (a warmed-up small CNN for Fashion-MNIST is about 0.7 GB resident on its own);
- a quarter for the images of queued calls, :data:`COPIES_PER_QUEUED_IMAGE` times ``H x W x C``
  bytes each: the body as gRPC received it (gRPC keeps it until the call ends), the decoded array
  the batcher queues, and what gRPC's buffers and the allocator keep besides (the parsed request's
  copy is freed before the wait). So ``max_queued_images = memory / 4 / (3 x H x W x C)``;
- a quarter for the calls themselves, :data:`BYTES_PER_CALL` each beyond their images (gRPC's call,
  the handler's coroutine and future): ``max_concurrent_calls = memory / 4 / BYTES_PER_CALL``.

Both figures are resident memory measured on a server holding hundreds of queued calls (300 calls
of 256 Fashion-MNIST images grew it by 2.9 times their bytes; 2,000 one-image calls by 26 KiB each),
rounded up.

A Predict beyond either cap is refused with RESOURCE_EXHAUSTED and a retry hint, and is not
charged to the query budget (``docs/grpc.md``).
"""
from __future__ import annotations

from avc_common.images import ImageShape

MEMORY_MIB = 4096  # crisp.yaml's resources.memory (4Gi)
COPIES_PER_QUEUED_IMAGE = 3
BYTES_PER_CALL = 32 * 1024


def default_max_queued_images(shape: ImageShape, memory_mib: int) -> int:
    """A quarter of ``memory_mib`` over the bytes a queued image holds."""
    return memory_mib * 2**20 // 4 // (COPIES_PER_QUEUED_IMAGE * shape.nbytes)


def default_max_concurrent_calls(memory_mib: int) -> int:
    """A quarter of ``memory_mib`` over the bytes a call holds besides its images."""
    return memory_mib * 2**20 // 4 // BYTES_PER_CALL
