"""The one gRPC client of the defense service; the scorer and the submission check both use it.

Calls wait for the server to be ready and are retried with exponential backoff while
it is unreachable or slow (UNAVAILABLE, DEADLINE_EXCEEDED), never when it refused the
request (INVALID_ARGUMENT, RESOURCE_EXHAUSTED): those are final. A retried Predict
may be counted twice against a query budget if the first attempt did reach the model.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from avc_common.images import ImageShape, ModelSpec
from avc_common.rpc import defense_pb2, defense_pb2_grpc

Reply = TypeVar("Reply")
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class DefenseError(Exception):
    """A call that failed for good: the gRPC status code and the server's explanation."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class InvalidRequestError(DefenseError):
    """INVALID_ARGUMENT: the request does not match the model's input spec."""


class BudgetExhaustedError(DefenseError):
    """RESOURCE_EXHAUSTED: the query budget cannot cover the request (or it was too large)."""


class ServerUnavailableError(DefenseError):
    """UNAVAILABLE or DEADLINE_EXCEEDED on every attempt."""


_ERRORS: dict[grpc.StatusCode, type[DefenseError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: BudgetExhaustedError,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: ServerUnavailableError,
}


@dataclass(frozen=True)
class ServerInfo:
    """What the server says of itself (the ModelInfo call); budget_total 0 and budget_remaining -1 mean no budget."""

    model: ModelSpec
    class_names: tuple[str, ...]
    max_images_per_request: int
    budget_total: int
    budget_remaining: int


class DefenseClient:
    """Label-only access to a defense server at ``target`` (``host:port``); use as a context manager.

    ``timeout_s`` bounds each attempt, ``retries`` and ``backoff_s`` (doubling) govern the retries,
    ``concurrency`` is how many chunks of one large :meth:`predict` are in flight at once.
    """

    def __init__(self, target: str, timeout_s: float = 30.0, retries: int = 5, backoff_s: float = 0.2,
                 concurrency: int = 4) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._channel = grpc.insecure_channel(target)
        self._stub = defense_pb2_grpc.DefenseStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="defense-client")
        self._info: ServerInfo | None = None

    def _call(self, method: Callable[..., Reply], request: object) -> Reply:
        """One unary call with wait-for-ready, a per-attempt timeout and backoff on transient failures."""
        attempt = 0
        while True:
            try:
                return method(request, timeout=self.timeout_s, wait_for_ready=True)
            except grpc.RpcError as err:
                code = err.code()
                if code not in RETRYABLE or attempt >= self.retries:
                    raise _ERRORS.get(code, DefenseError)(code, err.details() or "") from None
            time.sleep(self.backoff_s * 2 ** attempt)
            attempt += 1

    def info(self) -> ServerInfo:
        """The served model's input shape, classes, request limit and budget (fetched fresh)."""
        reply = self._call(self._stub.ModelInfo, defense_pb2.ModelInfoRequest())
        model = ModelSpec(ImageShape(reply.height, reply.width, reply.channels), reply.num_classes)
        self._info = ServerInfo(model, tuple(reply.class_names), reply.max_images_per_request,
                                reply.query_budget_total, reply.query_budget_remaining)
        return self._info

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Labels (int64, N) for uint8 N x H x W x C images, in chunks of the server's request limit."""
        info = self._info or self.info()
        info.model.shape.check(images)
        step = info.max_images_per_request
        chunks = [images[i:i + step] for i in range(0, len(images), step)]
        labels = list(self._pool.map(self._predict_chunk, chunks))
        return np.concatenate(labels) if labels else np.empty(0, dtype=np.int64)

    def _predict_chunk(self, images: np.ndarray) -> np.ndarray:
        reply = self._call(self._stub.Predict, defense_pb2.PredictRequest(images=[im.tobytes() for im in images]))
        if len(reply.labels) != len(images):
            raise DefenseError(grpc.StatusCode.INTERNAL,
                               f"server answered {len(reply.labels)} labels for {len(images)} images")
        return np.asarray(reply.labels, dtype=np.int64)

    def health(self, service: str = "") -> str:
        """The grpc.health.v1 status name for ``service`` ("" = the whole server), e.g. ``SERVING``."""
        reply = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._channel.close()

    def __enter__(self) -> DefenseClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
