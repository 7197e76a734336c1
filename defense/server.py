"""The gRPC transport: ``defense.v1.Defense`` plus health and reflection over a :class:`Batcher`, in plaintext
or TLS (optionally mutual), for anyone or for named callers with their own budgets (:mod:`defense.callers`).

Why ``grpc.aio`` rather than the thread-pool server: every in-flight Predict is just
a coroutine awaiting its batch, so thousands of concurrent clients cost no threads,
and the batch size is bounded by ``max_batch_size`` rather than by a worker-pool size
(a sync server with N workers can never form a batch of more than N requests). The
model runs in the batcher's own thread, never on the event loop.

The servicer only translates: the caller's token -> its :class:`Account` (:class:`Accounts`), bytes ->
:func:`decode_images` -> the account's :class:`QueryBudget` -> :class:`Batcher` -> labels; each of those is
tested on its own without a network. Health always answers without a token (a container runtime's probe
has none, and it tells only SERVING or not); reflection is off when there are callers unless asked for.
Every request is parsed inside its handler (:mod:`defense.wire`), so a body that is not a
protobuf is an ordinary INVALID_ARGUMENT, and everything a client can make the server refuse
is counted and logged at most once per :data:`defense.throttled_log.INTERVAL_S` per kind.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NoReturn

import grpc
import numpy as np
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from avc_common.artifact import Artifact
from avc_common.images import ImageShape
from avc_common.rpc import PUSHBACK_KEY, defense_pb2, defense_pb2_grpc
from avc_common.rpc.credentials import ServerTls
from defense import health_service, limits, wire
from defense.batcher import Batcher, QueueFull
from defense.budget import QueryBudget
from defense.callers import Account, Accounts, Caller
from defense.health_service import HealthService
from defense.metrics import CallCounts, CountingInterceptor, ForwardHistograms, MetricsEndpoint
from defense.stats import INTERVAL_S, ServerStats
from defense.throttled_log import ThrottledLog
from defense.validation import RequestError, decode_images, max_message_bytes

DEFENSE = defense_pb2.DESCRIPTOR.services_by_name["Defense"]
SERVICE = DEFENSE.full_name
REFLECTION = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
PUSHBACK_S = (0.01, 1.0)  # the hint: the model's time for the images queued now, within these bounds
log = logging.getLogger("defense.server")


@dataclass(frozen=True)
class ServerConfig:
    """Serving options; the CLI flags map one-to-one onto these fields."""

    host: str = "127.0.0.1"  # loopback: reachable from other machines only when asked (the container passes 0.0.0.0)
    port: int = 50051
    max_images_per_request: int = 256
    max_batch_size: int = 256
    # 0: a batch is whatever is queued when the model is free; requests that arrive during a forward
    # still share the next one. Waiting 2 ms added ~2 ms to every lone request and, in closed-loop
    # load of 8 or 64 clients, gave no measurable throughput (bench/server.py, docs/benchmarks.md).
    max_delay_ms: float = 0.0
    query_budget: int = 0  # shared by every call; must be 0 with callers, who each have their own
    grace_s: float = 10.0
    stats_file: Path | None = None  # where to keep the counters as JSON (defense/stats.py); None: nowhere
    memory_mib: int = limits.MEMORY_MIB  # what the two caps below are derived from when they are None
    max_concurrent_calls: int | None = None  # None: limits.default_max_concurrent_calls(memory_mib)
    max_queued_images: int | None = None  # None: limits.default_max_queued_images(...), at least a full request/batch
    tls: ServerTls | None = None  # None: plaintext
    callers: tuple[Caller, ...] | None = None  # None: no tokens, every call the one anonymous caller
    reflection: bool | None = None  # None: on without callers, off with them (reflection answers without a token)
    metrics_port: int | None = None  # Prometheus metrics over HTTP on this port (0: any free one); None: not served
    metrics_host: str | None = None  # where the metrics listen; None: ``host``

    @property
    def reflecting(self) -> bool:
        """Whether server reflection is served."""
        return self.callers is None if self.reflection is None else self.reflection

    def caps(self, shape: ImageShape) -> tuple[int, int]:
        """(most Predict calls in flight, most images queued) for a model taking ``shape`` images."""
        calls = self.max_concurrent_calls or limits.default_max_concurrent_calls(self.memory_mib)
        images = self.max_queued_images or max(limits.default_max_queued_images(shape, self.memory_mib),
                                               self.max_images_per_request, self.max_batch_size)
        return calls, images


@dataclass
class Counters:
    """Cumulative traffic, updated on the event loop only; :meth:`DefenseServer.stats` reports it."""

    requests: int = 0
    images: int = 0
    errors: int = 0
    unparsable: int = 0  # bodies, of any method, that were not a protobuf of its request
    busy: int = 0  # Predicts refused by --max-concurrent-calls or --max-queued-images
    draining: int = 0  # Predicts refused because the server was shutting down
    dropped: int = 0  # calls whose caller left (cancelled, deadline passed) before all their images were computed
    dropped_images: int = 0  # their images that were never computed (nor charged to the query budget)
    answer_s: float = 0.0  # wall time of answered Predicts, entry to return: the server's part of a call


class DefenseServicer(defense_pb2_grpc.DefenseServicer):
    """Wire <-> domain: identify the caller, decode and check, charge its budget, batch, answer labels.

    At most ``max_calls`` Predicts wait for labels at once; :meth:`drain` stops taking new ones.
    """

    def __init__(self, artifact: Artifact, max_images: int, batcher: Batcher, accounts: Accounts,
                 max_calls: int, refusals: ThrottledLog) -> None:
        self._spec = artifact.input_shape
        self._manifest = artifact.manifest
        self._max_images = max_images
        self._batcher = batcher
        self._accounts = accounts
        self._max_calls = max_calls
        self._refusals = refusals
        self._in_flight = 0  # Predicts whose images are with the batcher
        self._idle = asyncio.Event()
        self._idle.set()
        self._draining = False
        self.counters = Counters()
        self.budgets: dict[str, QueryBudget] = {}  # each caller's budget, from its first call on (for the metrics)

    @property
    def in_flight(self) -> int:
        """Predict calls whose images are with the batcher now."""
        return self._in_flight

    async def ModelInfo(self, request: defense_pb2.ModelInfoRequest,
                        context: grpc.aio.ServicerContext) -> defense_pb2.ModelInfo:
        account = await self._identify(context)
        return defense_pb2.ModelInfo(
            height=self._spec.height, width=self._spec.width, channels=self._spec.channels,
            num_classes=self._manifest["num_classes"], class_names=self._manifest["class_names"],
            max_images_per_request=self._max_images,
            query_budget_total=account.budget.total, query_budget_remaining=account.budget.remaining,
            seconds_per_image=self._batcher.seconds_per_image, queued_images=self._batcher.queued_images,
            caller=account.name)

    async def Predict(self, request: defense_pb2.PredictRequest,
                      context: grpc.aio.ServicerContext) -> defense_pb2.PredictResponse:
        start_s = time.perf_counter()
        budget = (await self._identify(context)).budget  # charged, and refunded, to this caller alone
        if self._draining:
            self.counters.draining += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; send the call again")
        if self._in_flight >= self._max_calls:
            await self._refuse_busy(context, "calls", f"{self._in_flight} Predict calls are waiting for labels, the "
                                                      f"most this server takes (--max-concurrent-calls)")
        try:
            images = decode_images(request.images, self._spec, self._max_images)
            budget.spend(len(images))
        except RequestError as err:
            self.counters.errors += 1
            await context.abort(err.code, err.message)
        del request  # its copy of the images: while they wait, the decoded array is the only one left to us
        try:
            future = self._batcher.submit(images)
        except QueueFull as err:
            budget.refund(len(images))
            await self._refuse_busy(context, "queue", f"{err} (--max-queued-images)")
        self._in_flight += 1  # no await since the check above: the cap holds exactly
        self._idle.clear()
        try:
            labels = await asyncio.wrap_future(future)
        except asyncio.CancelledError:  # the caller left (cancelled, or its deadline passed): no forward for it
            if dropped := self._batcher.abandon(future):
                budget.refund(dropped)
                self.counters.dropped += 1
                self.counters.dropped_images += dropped
                self._refusals.warning("dropped", "a caller (%s) left before its labels: %d images not computed "
                                       "and not charged", context.peer(), dropped)
            raise
        except Exception:
            self.counters.errors += 1
            log.exception("model forward failed")
            await context.abort(grpc.StatusCode.INTERNAL, "model forward failed; see the server log")
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
        response = defense_pb2.PredictResponse(labels=labels.tolist())
        self.counters.requests += 1
        self.counters.images += len(labels)
        self.counters.answer_s += time.perf_counter() - start_s
        return response

    async def _identify(self, context: grpc.aio.ServicerContext) -> Account:
        """The calling caller's account, or UNAUTHENTICATED (logged, throttled) without one of its tokens."""
        try:
            account = self._accounts.identify(context.invocation_metadata())
        except RequestError as err:
            self._refusals.warning("unauthenticated", "refused a call from %s with UNAUTHENTICATED: %s",
                                   context.peer(), err.message)
            await context.abort(err.code, err.message)
        self.budgets[account.name] = account.budget
        return account

    def unparsable(self, method: str, nbytes: int, context: grpc.aio.ServicerContext) -> None:
        """Count and (throttled) log a body that was not a protobuf of ``method``'s request (:mod:`defense.wire`)."""
        self.counters.unparsable += 1
        self._refusals.warning("unparsable", "refused a %d-byte body to %s from %s that is not a protobuf of its "
                               "request: INVALID_ARGUMENT", nbytes, method, context.peer())

    async def drain(self, timeout_s: float) -> None:
        """Refuse new Predicts (UNAVAILABLE); return when those in flight are answered, or after ``timeout_s``."""
        self._draining = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)

    async def _refuse_busy(self, context: grpc.aio.ServicerContext, kind: str, why: str) -> NoReturn:
        """RESOURCE_EXHAUSTED with a retry hint, uncharged: the server is full now, not the request wrong."""
        self.counters.busy += 1
        self._refusals.warning(f"busy-{kind}", "busy: %s; refused a call from %s with RESOURCE_EXHAUSTED",
                               why, context.peer())
        low, high = PUSHBACK_S
        pushback_s = min(max(self._batcher.seconds_per_image * self._batcher.queued_images, low), high)
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"server busy: {why}; send the call again later (it was not charged to the query budget)",
                            ((PUSHBACK_KEY, str(round(pushback_s * 1000))),))


class DefenseServer:
    """One served artifact: ``await start()``, ``await warm_up()`` (health turns SERVING), ``await stop()``.

    From SERVING until stopped it counts its traffic (:meth:`stats`) and reports it every
    :data:`defense.stats.INTERVAL_S` while there is some: a log line for people and, with
    ``config.stats_file``, the counters as JSON for tools. With ``config.metrics_port`` it also serves
    them, with the calls by method and status code, as Prometheus metrics (:mod:`defense.metrics`) from
    :meth:`start` until :meth:`stop` returns. Must be started and stopped on the same running event loop.
    """

    def __init__(self, artifact: Artifact, config: ServerConfig, device: str = "cpu") -> None:
        self.config = config
        self._artifact = artifact
        self._device = device
        self.max_concurrent_calls, self.max_queued_images = config.caps(artifact.input_shape)
        self.forwards = ForwardHistograms()  # the metrics' per-forward histograms
        self.batcher = Batcher(artifact.model, max_batch_size=config.max_batch_size, max_delay_ms=config.max_delay_ms,
                               device=device, max_queued_images=self.max_queued_images, observer=self.forwards)
        self.servicer = DefenseServicer(artifact, config.max_images_per_request, self.batcher,
                                        Accounts(config.callers, config.query_budget), self.max_concurrent_calls,
                                        ThrottledLog(log))
        self._health = HealthService(("", SERVICE))
        self.calls = CallCounts()  # every call by method and how it ended: the metrics' defense_requests_total
        self.metrics: MetricsEndpoint | None = None  # serving the metrics from start() until stop() returns
        self._server: grpc.aio.Server | None = None
        self._started_s: float | None = None
        self._stopped = asyncio.Event()
        self._reporter: asyncio.Task | None = None
        self._writing = asyncio.Lock()  # snapshots reach the file in the order they were taken
        self._snapshot_requests = 0
        self._snapshots: set[asyncio.Task] = set()

    async def start(self) -> int:
        """Listen (health NOT_SERVING until :meth:`warm_up`) and return the bound port."""
        limit = max_message_bytes(self._artifact.input_shape, self.config.max_images_per_request)
        # so_reuseport off: a second server on a busy port fails instead of silently sharing it
        server = grpc.aio.server(interceptors=[CountingInterceptor(self.calls)],
                                 options=[("grpc.max_receive_message_length", limit), ("grpc.so_reuseport", 0)])
        servicer, health = self.servicer, self._health
        served = {DEFENSE: {"ModelInfo": servicer.ModelInfo, "Predict": servicer.Predict},
                  health_service.SERVICE: {"Check": health.Check, "Watch": health.Watch}}
        if self.config.reflecting:
            reflecting = reflection.aio.ReflectionServicer([*(s.full_name for s in served), REFLECTION.full_name])
            served[REFLECTION] = {"ServerReflectionInfo": reflecting.ServerReflectionInfo}
        for service, behaviours in served.items():
            wire.add_service(server, service, behaviours, servicer.unparsable)
        address = f"{self.config.host}:{self.config.port}"
        tls = self.config.tls
        try:
            port = (server.add_insecure_port(address) if tls is None
                    else server.add_secure_port(address, tls.credentials()))
        except RuntimeError as err:
            raise OSError(f"cannot listen on {address}: {err}") from err
        if self.config.metrics_port is not None:  # OSError naming the metrics flags if their address is taken
            self.metrics = MetricsEndpoint(self, self.config.metrics_host or self.config.host, self.config.metrics_port)
        await server.start()
        self._server = server
        self._started_s = time.monotonic()
        return port

    async def warm_up(self) -> None:
        """One forward at the full batch size (allocations, kernel choice), then report SERVING and start counting.

        It runs through the batcher, on the thread that runs every forward: an OpenMP team started
        from any other thread makes libgomp count more threads than cores and stop spinning, which
        made every later forward on 2 cores about twice as slow (docs/benchmarks.md, bench/server.py).
        The first stats file is written here, before SERVING, so a path that cannot be written
        fails the start (``OSError``) rather than every report after it.
        """
        h, w, c = self._artifact.input_shape
        zeros = np.zeros((self.config.max_batch_size, h, w, c), dtype=np.uint8)
        await asyncio.wrap_future(self.batcher.submit(zeros))
        self.batcher.reset_stats()  # the counters describe traffic; a batch of zeros at max size is none of it
        await self._write_stats()  # before SERVING: whoever waits for SERVING finds the file
        await self._health.set(health_pb2.HealthCheckResponse.SERVING)
        self._reporter = asyncio.create_task(self._report())

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain, then stop; returns within the grace period (``config.grace_s`` unless given) and a moment.

        The drain: health reports NOT_SERVING (to Check and to open Watch streams: the port stays open),
        new Predicts are refused with UNAVAILABLE, queued ones go to the model at once (nothing more
        can join their batches) and in-flight ones are answered. It ends when none is left, or at the end
        of the grace period; then Watch streams end and gRPC stops, cancelling whatever is left. Reports
        go on through the drain; the stats file's last write follows it, so it counts every call the
        server answered.
        """
        loop = asyncio.get_running_loop()
        end_s = loop.time() + (self.config.grace_s if grace_s is None else grace_s)
        await self._health.set(health_pb2.HealthCheckResponse.NOT_SERVING)
        closing = asyncio.ensure_future(asyncio.to_thread(self.batcher.close))
        await self.servicer.drain(end_s - loop.time())
        await self._health.close()
        if self._server is not None:
            await self._server.stop(max(end_s - loop.time(), 0.0))
        await closing
        self._stopped.set()
        if self._reporter is not None:
            await self._reporter
            await self._write_stats()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.close)  # up to half a second: the HTTP server's poll interval

    def stats(self) -> ServerStats:
        """The counters now (fields: :class:`defense.stats.ServerStats`). Exact on the server's event loop; from
        another thread (a metrics scrape) each field is exact but a call being answered meanwhile may be in some and
        not yet in others."""
        counters, batches = self.servicer.counters, self.batcher.stats
        return ServerStats(requests=counters.requests, images=counters.images, errors=counters.errors,
                           unparsable=counters.unparsable, busy=counters.busy, draining=counters.draining,
                           dropped=counters.dropped, dropped_images=counters.dropped_images,
                           batches=batches.batches, batch_images=batches.images, largest_batch=batches.largest,
                           model_s=batches.model_s, answer_s=counters.answer_s,
                           uptime_s=0.0 if self._started_s is None else time.monotonic() - self._started_s,
                           snapshot_requests=self._snapshot_requests)

    def budgets_remaining(self) -> dict[str, int]:
        """Images each caller with a query budget may still have classified ("": the anonymous caller, without
        ``config.callers``); callers without a budget are left out."""
        callers = self.config.callers
        totals = {"": self.config.query_budget} if callers is None else {c.name: c.query_budget for c in callers}
        used = dict(self.servicer.budgets)
        return {name: used[name].remaining if name in used else total for name, total in totals.items() if total}

    def request_snapshot(self) -> None:
        """Write the counters now (the SIGUSR1 handler): the snapshot counts every call answered before it."""
        self._snapshot_requests += 1
        task = asyncio.get_running_loop().create_task(self._write_stats())
        self._snapshots.add(task)
        task.add_done_callback(self._snapshots.discard)

    async def _write_stats(self) -> None:
        """The counters to ``config.stats_file``, if one is set, off the event loop (the write fsyncs).

        The snapshot is taken inside the lock, so a later snapshot never lands before an earlier one.
        """
        if self.config.stats_file is not None:
            async with self._writing:
                await asyncio.to_thread(self.stats().write, self.config.stats_file)

    async def _report(self) -> None:
        """Until :meth:`stop`: every interval with traffic, one log line about it and the counters to the stats
        file (a failed write is logged and the server serves on)."""
        last = self.stats()
        while True:
            try:
                await asyncio.wait_for(self._stopped.wait(), INTERVAL_S)
                return
            except TimeoutError:
                pass
            now = self.stats()
            new = now.since(last)
            if new.requests or new.errors or new.unparsable or new.busy:
                log.info("%.0f images/s, %d requests (%.2f ms each in the server), %d errors, %d unparsable, "
                         "%d busy, %d batches (mean %.1f images, %.2f ms in the model)",
                         new.images / new.uptime_s, new.requests, new.answer_s * 1e3 / max(new.requests, 1),
                         new.errors, new.unparsable, new.busy, new.batches, new.batch_images / max(new.batches, 1),
                         new.model_s * 1e3 / max(new.batches, 1), extra={"interval": asdict(new)})
                try:
                    await self._write_stats()
                except OSError as err:
                    log.warning("cannot write the stats file: %s", err)
            last = now


async def serve(artifact: Artifact, config: ServerConfig, device: str = "cpu") -> None:
    """Serve until SIGTERM or SIGINT, then drain in-flight calls and return (the CLI exits 0)."""
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stopping.set)
    server = DefenseServer(artifact, config, device)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, server.request_snapshot)
    port = await server.start()
    log.info("listening on %s:%d (%s, %s x %s x %s, %d classes, device %s; at most %d calls in flight and %d images "
             "queued)", config.host, port, artifact.manifest["arch"], *artifact.input_shape, artifact.num_classes,
             device, server.max_concurrent_calls, server.max_queued_images)
    log.info("%s; %s; reflection %s", "plaintext" if config.tls is None else
             "TLS" + (", client certificates required" if config.tls.client_ca else ""),
             "anyone may call" if config.callers is None else f"{len(config.callers)} named callers, each with its "
             f"own budget", "on" if config.reflecting else "off")
    if config.callers is not None and config.tls is None:
        log.warning("bearer tokens without TLS cross the network in the clear: serve with --tls-cert and --tls-key "
                    "unless every caller is on this machine")
    if server.metrics is not None:
        host = config.metrics_host or config.host
        log.info("Prometheus metrics on http://%s:%d/metrics", f"[{host}]" if ":" in host else host,
                 server.metrics.port)
    await server.warm_up()
    log.info("model warmed up; SERVING%s", f"; counters in {config.stats_file}" if config.stats_file else "")
    await stopping.wait()
    log.info("signal received: draining in-flight calls (grace %.1f s)", config.grace_s)
    await server.stop()
    log.info("stopped")
