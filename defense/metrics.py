"""Prometheus metrics of the server on their own HTTP port (``serve --metrics-port``, off by default), and how a tool
reads them back (:func:`scrape`); the metric names and their meaning: ``docs/grpc.md`` "Metrics".

Why a collector rather than prometheus_client's ``Counter``/``Gauge`` objects: the server already keeps its
figures (``Counters``, the batcher's totals, the budgets) for the stats file and the log. :class:`ServerCollector`
reads those same figures at every scrape, so the endpoint, ``--stats-file`` and the log line can never disagree and
no event is counted in two places. What only the metrics show is kept here, once: the calls by method and status
code (:class:`CountingInterceptor`, around every handler) and the two per-forward histograms
(:class:`ForwardHistograms`, told of each forward by the batcher). Each server has its own
:class:`prometheus_client.CollectorRegistry`, so several servers in one process (the tests) never share a series.

A message over ``grpc.max_receive_message_length`` is refused by gRPC's core (RESOURCE_EXHAUSTED) after the
interceptor has seen the call start but before any handler runs; no server code sees how it ends. Such a call is
counted in ``defense_calls_started_total`` and in no ``defense_requests_total`` series: started minus handled,
less the calls in progress, is what gRPC refused on its own.
"""
from __future__ import annotations

import asyncio
import inspect
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from defense.stats import ServerStats

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from defense.server import DefenseServer

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)  # images per forward: powers of two
MODEL_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNKNOWN_METHOD = "unknown"  # the method label of calls to a method the server does not serve (UNIMPLEMENTED)


class Histogram:
    """Counts of observations per bucket (upper bounds ``bounds``, then +Inf), their sum; thread-safe, resettable.

    prometheus_client's ``Histogram`` cannot be reset, and the server starts counting from zero after its
    warm-up forward (:meth:`Batcher.reset_stats`)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self._lock = threading.Lock()
        self.reset()

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[next((i for i, bound in enumerate(self.bounds) if value <= bound), len(self.bounds))] += 1
            self._sum += value

    def reset(self) -> None:
        with self._lock:
            self._counts = [0] * (len(self.bounds) + 1)
            self._sum = 0.0

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        """The histogram now, as prometheus_client exposes one (cumulative buckets, ``_count``, ``_sum``)."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, buckets = 0, []
        for bound, count in zip([*(str(float(b)) for b in self.bounds), "+Inf"], counts):
            cumulative += count
            buckets.append((bound, cumulative))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=total)


class ForwardHistograms:
    """The two per-forward histograms, its images and its seconds: the batcher's :class:`ForwardObserver`, so they
    hold exactly the forwards the stats file sums, from the one measurement the batcher takes."""

    def __init__(self) -> None:
        self.batch_size = Histogram(BATCH_SIZE_BUCKETS)
        self.model_seconds = Histogram(MODEL_SECONDS_BUCKETS)

    def forward(self, images: int, seconds: float) -> None:
        self.batch_size.observe(images)
        self.model_seconds.observe(seconds)

    def reset(self) -> None:
        self.batch_size.reset()
        self.model_seconds.reset()


@dataclass
class CallCounts:
    """Calls by method: ``started`` when gRPC hands them to the server, ``handled`` by (method, status code name)
    when they end. Updated on the event loop only; a scrape copies the dicts (atomic under the GIL)."""

    started: dict[str, int] = field(default_factory=dict)
    handled: dict[tuple[str, str], int] = field(default_factory=dict)

    def start(self, method: str) -> None:
        self.started[method] = self.started.get(method, 0) + 1

    def end(self, method: str, code: grpc.StatusCode) -> None:
        key = (method, code.name)
        self.handled[key] = self.handled.get(key, 0) + 1


def _ending(err: BaseException, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The status a call that raised ``err`` ends with, as gRPC will send it."""
    if isinstance(err, asyncio.CancelledError):  # the caller left, or its deadline passed
        remaining = context.time_remaining()
        return grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 \
            else grpc.StatusCode.CANCELLED
    if isinstance(err, grpc.aio.AbortError):
        return context.code() or grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.UNKNOWN  # what grpc.aio answers for an exception a handler did not catch


def _counted(behaviour: Callable, method: str, counts: CallCounts) -> Callable:
    """``behaviour`` (a handler's coroutine or async generator function), counting how each call ends."""
    if inspect.isasyncgenfunction(behaviour):
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for reply in behaviour(request, context):
                    yield reply
            except BaseException as err:
                counts.end(method, _ending(err, context))
                raise
            counts.end(method, context.code() or grpc.StatusCode.OK)

        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            reply = await behaviour(request, context)
        except BaseException as err:
            counts.end(method, _ending(err, context))
            raise
        counts.end(method, context.code() or grpc.StatusCode.OK)
        return reply

    return unary


_HANDLERS = {(False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
             (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
             (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
             (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler)}


class CountingInterceptor(grpc.aio.ServerInterceptor):
    """Counts every call the server receives in ``counts``: when it starts, and how it ends (status code).

    Calls to a method the server does not serve are counted as :data:`UNKNOWN_METHOD` (gRPC answers them
    UNIMPLEMENTED), so a client cannot add series by inventing method names."""

    def __init__(self, counts: CallCounts) -> None:
        self._counts = counts

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            self._counts.start(UNKNOWN_METHOD)
            self._counts.end(UNKNOWN_METHOD, grpc.StatusCode.UNIMPLEMENTED)
            return None
        method = details.method
        self._counts.start(method)
        kind, make = _HANDLERS[handler.request_streaming, handler.response_streaming]
        return make(_counted(getattr(handler, kind), method, self._counts),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)


class ServerCollector(Collector):
    """The server's figures at the moment of a scrape, read where the server keeps them (no copy of its own)."""

    def __init__(self, server: DefenseServer) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        server = self._server
        stats, calls = server.stats(), server.calls
        started = CounterMetricFamily("defense_calls_started", "calls gRPC handed to the server, by method (also "
                                      "those it then refused itself, such as oversize messages)", labels=["method"])
        for method, n in sorted(dict(calls.started).items()):
            started.add_metric([method], n)
        yield started
        handled = CounterMetricFamily("defense_requests", "calls ended, by method and gRPC status code",
                                      labels=["method", "code"])
        for (method, code), n in sorted(dict(calls.handled).items()):
            handled.add_metric([method, code], n)
        yield handled
        yield CounterMetricFamily("defense_images", "images answered with labels", value=stats.images)
        yield SummaryMetricFamily("defense_answer_seconds", "seconds in the server of the Predict calls answered "
                                  "with labels, from the handler's entry to its return", count_value=stats.requests,
                                  sum_value=stats.answer_s)
        yield server.forwards.batch_size.family("defense_batch_size", "images per model forward")
        yield server.forwards.model_seconds.family("defense_model_seconds", "seconds per model forward")
        yield GaugeMetricFamily("defense_queued_images", "images waiting for a model forward",
                                value=server.batcher.queued_images)
        yield GaugeMetricFamily("defense_inflight_calls", "Predict calls waiting for their labels "
                                "(at most --max-concurrent-calls)", value=server.servicer.in_flight)
        budgets = GaugeMetricFamily("defense_query_budget_remaining", "images a caller may still have classified "
                                    "(callers with a query budget only)", labels=["caller"])
        for caller, remaining in server.budgets_remaining().items():
            budgets.add_metric([caller], remaining)
        yield budgets


class MetricsEndpoint:
    """``/metrics`` over plain HTTP on ``host:port`` (0: any free port) for ``server``, in a daemon thread."""

    def __init__(self, server: DefenseServer, host: str, port: int) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(ServerCollector(server))
        ProcessCollector(registry=self.registry)  # CPU seconds, memory, open files, start time: process_*
        try:
            self._httpd: WSGIServer
            self._httpd, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as err:
            raise OSError(f"cannot serve metrics on {host}:{port} (--metrics-host, --metrics-port): "
                          f"{err.strerror or err}") from err
        self.port: int = self._httpd.server_port

    def close(self) -> None:
        """Stop answering scrapes and free the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def samples(url: str, timeout_s: float = 10.0) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the metrics at ``url``: (sample name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(url: str, timeout_s: float = 10.0) -> ServerStats:
    """The server's counters from its metrics at ``url``, as the stats file names them: those the metrics carry
    (``requests``, ``images``, ``batches``, ``batch_images``, ``model_s``, ``answer_s``); the rest are 0.

    Exact for every call answered before the scrape: the server counts a call before it sends the reply."""
    found = {name: value for (name, labels), value in samples(url, timeout_s).items() if not labels}
    return ServerStats(requests=int(found.get("defense_answer_seconds_count", 0)),
                       images=int(found.get("defense_images_total", 0)),
                       batches=int(found.get("defense_batch_size_count", 0)),
                       batch_images=int(found.get("defense_batch_size_sum", 0)),
                       model_s=found.get("defense_model_seconds_sum", 0.0),
                       answer_s=found.get("defense_answer_seconds_sum", 0.0))
