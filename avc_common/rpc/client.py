"""The one gRPC client of the defense service; the scorer and the submission check both use it.

Calls are retried with exponential backoff while the server is unreachable (UNAVAILABLE, or
DEADLINE_EXCEEDED with no answer to ModelInfo either), and say why when they give up (cannot
resolve host, connection refused, timed out: :class:`ServerUnavailableError`); never
when it refused the request (INVALID_ARGUMENT, UNAUTHENTICATED, or RESOURCE_EXHAUSTED for the
query budget): those are final. A server that is full (its caps on calls or queued images) answers
RESOURCE_EXHAUSTED with gRPC's retry hint ``grpc-retry-pushback-ms`` in the trailers and
charges nothing: the call is sent again after that pause, within ``max_wait_s``.

A busy server is not a dead one. Each Predict's deadline grows with the images it carries
and those queued before it, at the server's own measured time per image (``ModelInfo``);
a Predict whose deadline still passes while the server answers ModelInfo is sent again with
a deadline from the fresh figures, without using up a retry. The server drops a queued call
whose caller left and does not charge it, so sending it again computes and counts it once.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from avc_common.images import ImageShape, ModelSpec
from avc_common.rpc import PUSHBACK_KEY, defense_pb2, defense_pb2_grpc
from avc_common.rpc.credentials import BearerToken, ClientTls
from avc_common.rpc.targets import channel_target

Reply = TypeVar("Reply")
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
PROBE_S = 5.0  # the least time a server gets to answer "are you there?" (ModelInfo runs off the model's queue)
BACKOFF_S = 0.2  # the first pause between attempts at an unreachable server; it doubles after each
# Why no server answered, as gRPC's UNAVAILABLE details say it (a DEADLINE_EXCEEDED is "timed out"), and what to check.
_UNREACHABLE = (("errors resolving", "cannot resolve host"), ("DNS resolution failed", "cannot resolve host"),
                ("Connection refused", "connection refused"))
UNREACHABLE_HINTS = {"cannot resolve host": "check the host name",
                     "connection refused": "is the server running, on that port?",
                     "timed out": "is the server running, and its host reachable from here?"}


def unreachable_reason(code: grpc.StatusCode, details: str) -> str | None:
    """Why a call that did not wait for a ready server found none: "cannot resolve host", "connection refused" or
    "timed out"; None when a server answered UNAVAILABLE itself (while it shuts down, say)."""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "timed out"
    return next((reason for marker, reason in _UNREACHABLE if marker in details), None)


def unreachable_wait_s(retries: int, timeout_s: float, backoff_s: float = BACKOFF_S) -> tuple[float, float]:
    """How long a client tries an address where no server answers, before it gives up: (a refused connection or an
    unknown host, which fail each attempt at once: the pauses alone; a host that does not answer, or a server that
    answered before and has gone: every attempt's ``timeout_s`` too)."""
    pauses = backoff_s * (2 ** retries - 1)
    return pauses, pauses + (retries + 1) * timeout_s


class DefenseError(Exception):
    """A call that failed for good: the gRPC status code and the server's explanation (``message``: ours instead)."""

    def __init__(self, code: grpc.StatusCode, details: str, message: str | None = None) -> None:
        super().__init__(message or f"{code.name}: {details}")
        self.code = code
        self.details = details


class InvalidRequestError(DefenseError):
    """INVALID_ARGUMENT: the request does not match the model's input spec."""


class BudgetExhaustedError(DefenseError):
    """RESOURCE_EXHAUSTED without a retry hint: the query budget cannot cover the request (or it was too large)."""


class ServerUnavailableError(DefenseError):
    """UNAVAILABLE or DEADLINE_EXCEEDED on every attempt. From the client: which ``target``, for how long
    (``waited_s``), and the ``reason`` where gRPC told one (a key of :data:`UNREACHABLE_HINTS`), all in the message."""

    def __init__(self, code: grpc.StatusCode, details: str, target: str | None = None, reason: str | None = None,
                 waited_s: float = 0.0) -> None:
        self.target, self.reason, self.waited_s = target, reason, waited_s
        why = f"{reason}; {UNREACHABLE_HINTS[reason]}" if reason else f"{code.name}: {details}"
        message = None if target is None else f"no answer from {target} after {waited_s:.1f} s: {why}"
        super().__init__(code, details, message)


class UnauthenticatedError(DefenseError):
    """UNAUTHENTICATED: the server takes named callers only, and the call carried none of their tokens (final)."""


_ERRORS: dict[grpc.StatusCode, type[DefenseError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: BudgetExhaustedError,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: ServerUnavailableError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
}


def _pushback_s(err: grpc.RpcError) -> float | None:
    """The pause a busy server asked for (RESOURCE_EXHAUSTED with the retry hint), or None for a final refusal."""
    if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    hint = dict(err.trailing_metadata() or ()).get(PUSHBACK_KEY)
    try:
        return max(int(hint), 0) / 1000 if hint is not None else None
    except (TypeError, ValueError):
        return None  # a hint that is not a number of ms: not one we can follow


@dataclass(frozen=True)
class ServerInfo:
    """What the server says of itself (the ModelInfo call); budget_total 0 and budget_remaining -1 mean no budget."""

    model: ModelSpec
    class_names: tuple[str, ...]
    max_images_per_request: int
    budget_total: int
    budget_remaining: int
    seconds_per_image: float = 0.0  # the model's recent time per image (0: not reported)
    queued_images: int = 0  # images waiting for the model when this was asked
    caller: str = ""  # whose budget the budget fields are: a named caller, or "" (anonymous, shared by all)


class DefenseClient:
    """Label-only access to a defense server at ``target`` (``host:port``, or several replicas: a comma-separated
    list or a gRPC name, :func:`avc_common.rpc.targets.channel_target`); use as a context manager.

    ``timeout_s`` is the deadline of a call on an idle server; a Predict's adds ``patience`` times the
    server's time per image for its images and those queued before it. A Predict is sent again while
    the server is busy for at most ``max_wait_s`` in all. ``retries`` and ``backoff_s`` (doubling) govern
    an unreachable server; ``concurrency`` is how many chunks of the :meth:`predict` calls too large for one
    request are in flight, over all callers. ``tls`` makes the channel TLS (mutual with a client certificate),
    and ``token`` is sent with every call as ``authorization: Bearer TOKEN`` (:mod:`avc_common.rpc.credentials`).
    Calls go round-robin over the target's replicas; ``health_checked`` also skips one whose health says NOT_SERVING.

    One client serves several threads at once (the scorer's concurrent units): the channel and its stubs are
    thread-safe, each call keeps its retry state to itself, and the cached :class:`ServerInfo` is replaced
    whole, never edited. A :meth:`predict` that fits one request is sent from its caller's thread, so the
    callers' requests are never queued behind the pool; only a larger one's chunks share it.
    """

    def __init__(self, target: str, timeout_s: float = 30.0, retries: int = 5, backoff_s: float = BACKOFF_S,
                 concurrency: int = 4, patience: float = 4.0, max_wait_s: float = 3600.0,
                 tls: ClientTls | None = None, token: str | None = None, health_checked: bool = False) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.patience = patience
        self.max_wait_s = max_wait_s
        where = channel_target(target, health_checked)  # several replicas: round_robin (avc_common/rpc/targets.py)
        channel = (grpc.insecure_channel(where.target, where.options) if tls is None
                   else grpc.secure_channel(where.target, tls.credentials(), [*where.options, *tls.options()]))
        self._channel = channel if token is None else grpc.intercept_channel(channel, BearerToken(token))
        self._stub = defense_pb2_grpc.DefenseStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="defense-client")
        self._info: ServerInfo | None = None
        self._answered = False  # whether the server has answered a call yet (see _call)

    def _call(self, method: Callable[..., Reply], request: object,
              deadline_s: Callable[[], float] | None = None) -> Reply:
        """One unary call, with backoff while the server is unreachable.

        Until the server has answered once, an attempt fails as soon as its connection does (no wait-for-ready),
        so that an unknown host or a server that is not running is told within the pauses between attempts,
        with gRPC's reason, not after every attempt's deadline with none. After that, an attempt waits for the
        server to be ready (it may be restarting), and a final failure is explained by one probe that does not.
        Each attempt gets ``timeout_s``, or ``deadline_s()`` for a call the server's load decides (a Predict):
        such a call that runs out of time while the server still answers ModelInfo is sent again, within
        ``max_wait_s``, without using up a retry.
        """
        started = time.monotonic()
        give_up = started + self.max_wait_s
        attempt = 0
        while True:
            waited = self._answered
            try:
                reply = method(request, timeout=deadline_s() if deadline_s else self.timeout_s, wait_for_ready=waited)
                self._answered = True
                return reply
            except grpc.RpcError as err:
                code = err.code()
                if (deadline_s and code == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() < give_up
                        and self._busy()):
                    continue  # slow, not gone: again, with a deadline from the server's fresh figures
                pause_s = _pushback_s(err)
                if pause_s is not None and time.monotonic() + pause_s < give_up:
                    time.sleep(pause_s)  # full, not failing: the server said when to come back
                    continue
                if code not in RETRYABLE or attempt >= self.retries:
                    raise self._failure(code, err.details() or "", waited, time.monotonic() - started) from None
            time.sleep(self.backoff_s * 2 ** attempt)
            attempt += 1

    def _failure(self, code: grpc.StatusCode, details: str, waited: bool, waited_s: float) -> DefenseError:
        """The error for a call's final status; ``waited``: its last attempt waited for a ready server."""
        if code not in RETRYABLE:
            return _ERRORS.get(code, DefenseError)(code, details)
        reason = unreachable_reason(code, details)
        if waited and reason == "timed out":  # wait-for-ready turns every reason into a deadline: ask without it
            reason = self._why_unreachable() or reason
        return ServerUnavailableError(code, details, self.target, reason, waited_s)

    def _why_unreachable(self) -> str | None:
        """Why the server cannot be reached now, from one health call that does not wait for it (None: it answers,
        or refuses for a reason of its own)."""
        try:
            self._health.Check(health_pb2.HealthCheckRequest(), timeout=min(self.timeout_s, PROBE_S))
        except grpc.RpcError as err:
            return unreachable_reason(err.code(), err.details() or "")
        return None

    def info(self) -> ServerInfo:
        """The served model's input shape, classes, request limit, budget and load (fetched fresh)."""
        return self._remember(self._call(self._stub.ModelInfo, defense_pb2.ModelInfoRequest()))

    def deadline_s(self, images: int) -> float:
        """The deadline of a Predict of ``images`` now: the idle one plus the server's work before the answer."""
        info = self._info or self.info()
        return self.timeout_s + self.patience * info.seconds_per_image * (info.queued_images + images)

    def _busy(self) -> bool:
        """Whether the server answers one ModelInfo call (so a Predict that ran out of time met a busy server,
        not a dead one); refreshes the figures :meth:`deadline_s` uses."""
        try:
            self._remember(self._stub.ModelInfo(defense_pb2.ModelInfoRequest(), timeout=max(self.timeout_s, PROBE_S)))
        except grpc.RpcError:
            return False
        return True

    def _remember(self, reply: defense_pb2.ModelInfo) -> ServerInfo:
        model = ModelSpec(ImageShape(reply.height, reply.width, reply.channels), reply.num_classes)
        self._info = ServerInfo(model, tuple(reply.class_names), reply.max_images_per_request,
                                reply.query_budget_total, reply.query_budget_remaining,
                                reply.seconds_per_image, reply.queued_images, reply.caller)
        return self._info

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Labels (int64, N) for uint8 N x H x W x C images, in chunks of the server's request limit."""
        info = self._info or self.info()
        info.model.shape.check(images)
        step = info.max_images_per_request
        if len(images) <= step:  # one request (or none), sent from this thread
            return self._predict_chunk(images) if len(images) else np.empty(0, dtype=np.int64)
        chunks = [images[i:i + step] for i in range(0, len(images), step)]
        return np.concatenate(list(self._pool.map(self._predict_chunk, chunks)))

    def _predict_chunk(self, images: np.ndarray) -> np.ndarray:
        request = defense_pb2.PredictRequest(images=[im.tobytes() for im in images])
        reply = self._call(self._stub.Predict, request, partial(self.deadline_s, len(images)))
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
