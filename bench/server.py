"""Serving throughput and latency: the real gRPC server against the same model called in-process.

For each model (random weights, exported into a temporary artifact exactly as training
does) the bench starts ``python -m defense serve`` as a subprocess on 127.0.0.1 (any free
port; :mod:`defense.process`), so the load generator's GIL never competes with the server's,
and reads the server's own counters (batches, time in the model, time per call in the server)
from its Prometheus metrics (``--metrics-port``, :func:`defense.metrics.scrape`). Load comes from this
process, in closed loops (each client sends its next call when the previous one returns):
N single-image clients are coroutines on one ``grpc.aio`` channel; a single client (one
image, or ``--batch-images`` per call) is a blocking stub, as ``DefenseClient`` uses.
Requests are serialised once and replies are not decoded, so the generator costs as little
CPU as a Python client can. The reference is the served model itself (``load_artifact``) in
this process with the same torch threads: ``classify`` (uint8 -> float, forward, argmax,
under ``torch.inference_mode``) on a full batch (the server's max batch size) and on one
image. The 1-client scenario alternates with in-process batch-1 forwards (the machine's
speed drifts), and ``--echo`` adds a no-model gRPC server: the most any Python gRPC server
can deliver here, with the same load generator.

Client and server share this machine's cores: the CPU that the server, the client and every
other process used is measured and printed per scenario, so the figures can be read for what
they are.

    python bench/server.py                                  # both models, 1/8/64 clients
    python bench/server.py --models smallcnn --duration-s 3

Ends with one ``name: value`` line per figure, e.g. ``resnet18 64-clients/in-process ratio: 0.86``.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np
import torch

from avc_common.artifact import load_artifact, save_artifact
from avc_common.atomic import atomic_write_text
from avc_common.cli import HelpFormatter
from avc_common.rpc import defense_pb2
from avc_common.rpc.client import DefenseClient
from defense.batcher import classify
from defense.metrics import scrape
from defense.process import ServerProcess, ServerStartError, free_port, wait_serving
from defense.server import ServerConfig
from defense.stats import ServerStats
from training.models import create_model

ROOT = Path(__file__).resolve().parent.parent
PREDICT = "/defense.v1.Defense/Predict"
# bench name -> (registry arch, (height, width, channels), classes, dataset)
MODELS = {
    "resnet18": ("resnet18", (64, 64, 3), 200, "tiny_imagenet"),
    "smallcnn": ("small_cnn", (28, 28, 1), 10, "fashion_mnist"),
}
DEFAULTS = ServerConfig()
# the goals: 64 single-image clients get this share of in-process throughput; batch 1 adds <= 1 ms
GOAL_RATIO = {"resnet18": 0.8, "smallcnn": 0.5}
GOAL_ADDED_MS = 1.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the model and the in-process baseline -----------------------------------------------

def build_artifact(name: str, out_dir: Path) -> Path:
    """Random-weight model behind its Normalize layer, exported with :func:`save_artifact`."""
    arch, (h, w, c), classes, dataset = MODELS[name]
    torch.manual_seed(0)
    net = create_model(arch, classes, c, [0.5] * c, [0.25] * c).eval()
    return save_artifact(net, out_dir / name, input_shape=(h, w, c), class_names=[f"c{i}" for i in range(classes)],
                         arch=arch, dataset=dataset, training={"loss": "none (bench: random weights)"}, metrics={})


def busy_cpu_s() -> float:
    """CPU seconds spent by everything on the machine so far (all cores; /proc/stat, not idle/iowait)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """Cores used by processes other than ours over a stretch: measurements with much of it are noise."""

    def __init__(self, ours=time.process_time) -> None:
        self._ours = ours
        self._t, self._busy, self._own = time.perf_counter(), busy_cpu_s(), ours()

    def cores(self) -> float:
        wall = time.perf_counter() - self._t
        return max(busy_cpu_s() - self._busy - (self._ours() - self._own), 0.0) / wall


def time_calls(fn, duration_s: float, min_calls: int, max_calls: int) -> list[float]:
    """Seconds per call of ``fn``: at least ``min_calls``, then until ``duration_s`` or ``max_calls``."""
    times: list[float] = []
    stop = time.perf_counter() + duration_s
    while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() < stop):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def random_images(shape: tuple[int, int, int], n: int, seed: int) -> np.ndarray:
    """``n`` random uint8 HWC images of ``shape``, the same ones for the same seed."""
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def in_process(model, shape: tuple[int, int, int], batch: int, duration_s: float) -> dict[str, float]:
    """Images/s of ``classify`` at ``batch`` and the median ms of ``classify`` on one image."""
    full = random_images(shape, batch, seed=0)
    one = full[:1].copy()
    classify(model, full)  # warm-up: allocations, kernel choice
    for _ in range(20):
        classify(model, one)
    other = OtherLoad()
    batch_times = time_calls(lambda: classify(model, full), duration_s, 3, 10_000)
    one_times = time_calls(lambda: classify(model, one), min(duration_s, 3.0), 50, 100_000)
    return {"other_cores": other.cores(), "images_per_s": batch / statistics.median(batch_times),
            "batch_ms": statistics.median(batch_times) * 1e3,
            "batch1_ms": statistics.median(one_times) * 1e3,
            "batch1_p99_ms": float(np.percentile(one_times, 99)) * 1e3}


# --- the server subprocess -------------------------------------------------------------

# A gRPC server with no model at all: Predict answers one fixed label at once (and health says
# SERVING). What the load generator gets from it is the most that any Python gRPC server could
# deliver on this machine. Its one argument is the port.
ECHO_SERVER = """
import asyncio, sys, grpc
from grpc_health.v1 import health, health_pb2_grpc
async def predict(request, context):
    return b"\\x0a\\x01\\x00"  # PredictResponse(labels=[0])
async def main():
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "defense.v1.Defense", {"Predict": grpc.unary_unary_rpc_method_handler(predict)}),))
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
    await server.start()
    await server.wait_for_termination()
asyncio.run(main())
"""


@dataclass
class Served:
    """A running server subprocess as the load generator sees it: its address, its CPU time, its counters."""

    process: ServerProcess
    target: str
    metrics_url: str | None  # None: the echo server, which counts nothing

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process so far (all its threads)."""
        fields = Path(f"/proc/{self.process.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stats(self) -> ServerStats:
        """The server's counters now, every call it answered so far included (it counts a call before replying)."""
        return scrape(self.metrics_url) if self.metrics_url else ServerStats()


@contextlib.contextmanager
def serving(argv: list[str], port: int, metrics_url: str | None = None) -> Iterator[Served]:
    """``argv``, a server that listens on 127.0.0.1:``port``, from once its health says SERVING; stopped after."""
    target = f"127.0.0.1:{port}"
    with ServerProcess(argv, cwd=ROOT) as process:
        wait_serving(process, target, timeout_s=120)
        yield Served(process, target, metrics_url)


def defense_server(artifact: Path, args: argparse.Namespace,
                   max_images: int) -> contextlib.AbstractContextManager[Served]:
    """``python -m defense serve`` with the bench's settings, its counters at its metrics endpoint."""
    port, metrics_port = free_port(), free_port()
    return serving([sys.executable, "-m", "defense", "serve", "--model", str(artifact), "--host", "127.0.0.1",
                    "--port", str(port), "--threads", str(args.threads), "--max-batch-size", str(args.max_batch_size),
                    "--max-delay-ms", str(args.max_delay_ms), "--max-images-per-request", str(max_images),
                    "--grace-s", "2", "--metrics-port", str(metrics_port)], port,
                   f"http://127.0.0.1:{metrics_port}/metrics")


def echo_server() -> contextlib.AbstractContextManager[Served]:
    port = free_port()
    return serving([sys.executable, "-c", ECHO_SERVER, str(port)], port)


# --- the load generator ------------------------------------------------------------------

@dataclass
class Scenario:
    """One load pattern's results; rates are exact for closed loops (see :func:`load`)."""

    name: str
    clients: int
    images_per_call: int
    calls: int = 0
    errors: int = 0
    images_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    client_cores: float = 0.0
    server_cores: float = 0.0
    server_mean_batch: float = 0.0
    server_batches: int = 0
    server_model_ms: float = 0.0  # mean time per batch inside the server's model forward
    server_answer_ms: float = 0.0  # mean time per call inside the server (Predict's entry to its return)
    other_cores: float = 0.0
    error_examples: list[str] = field(default_factory=list)


class _Tally:
    """What the clients of one scenario record: latencies of calls started in the window, per-client rates."""

    def __init__(self, scenario: Scenario, window: tuple[float, float], max_calls: int) -> None:
        self.scenario, self.window, self.max_calls = scenario, window, max_calls
        self.started = 0
        self.latencies: list[float] = []
        self.rates: list[float] = []

    def next_call(self) -> float | None:
        """The start time of a client's next call, or ``None`` once time or the call budget is up."""
        now = time.perf_counter()
        if now >= self.window[1] or self.started >= self.max_calls:
            return None
        self.started += 1
        return now

    def error(self, err) -> None:
        self.scenario.errors += 1
        if len(self.scenario.error_examples) < 3:
            self.scenario.error_examples.append(f"{err.code().name}: {err.details()}")


class _ClientLog:
    """One closed-loop client's calls inside the window: its rate is calls over their time span."""

    def __init__(self, tally: _Tally) -> None:
        self.tally, self.first, self.last, self.calls = tally, 0.0, 0.0, 0

    def done(self, start: float) -> None:
        end = time.perf_counter()
        if start >= self.tally.window[0]:
            self.first = start if not self.calls else self.first
            self.last, self.calls = end, self.calls + 1
            self.tally.latencies.append(end - start)

    def close(self) -> None:
        if self.calls:
            self.tally.rates.append(self.calls * self.tally.scenario.images_per_call / (self.last - self.first))


async def load(server: Served, request: bytes, scenario: Scenario, warmup_s: float, duration_s: float,
               max_calls: int, timeout_s: float) -> np.ndarray:
    """``scenario.clients`` closed-loop clients each keep one call in flight for ``warmup_s + duration_s``.

    Calls started in the measured window count. Each client's rate is its images over the time
    from its first such call's start to its last such call's end (a closed loop: the next call
    starts when the previous one returns, so this span is whole round trips, however the server
    groups them into batches); the scenario's rate is the sum over clients. Every loop stops by
    time and by ``max_calls``; every call has a deadline. Returns the latencies (ms) it counted.

    Several clients are coroutines on one ``grpc.aio`` channel; a single client is a blocking
    stub on its own thread (like :class:`avc_common.rpc.client.DefenseClient`; about 0.1 ms quicker per
    call here than an aio call, so the latency figures are not inflated by the generator).
    """
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    blocking = scenario.clients == 1
    sync_channel = grpc.insecure_channel(server.target, options=options) if blocking else None
    try:
        async with grpc.aio.insecure_channel(server.target, options=options) as channel:
            if blocking:
                grpc.channel_ready_future(sync_channel).result(timeout=30)
                sync_predict = sync_channel.unary_unary(PREDICT)
            await asyncio.wait_for(channel.channel_ready(), timeout=30)
            predict = channel.unary_unary(PREDICT)  # bytes in, bytes out: no per-call (de)serialisation
            # No warm-up: the counters are read before the first call, so the window's count is exact. With one,
            # they are read at the window's start while calls run: a call on either edge may be counted or not.
            opening = None if warmup_s else await asyncio.to_thread(server.stats)
            begin = time.perf_counter()
            tally = _Tally(scenario, (begin + warmup_s, begin + warmup_s + duration_s), max_calls)

            async def client() -> None:
                log = _ClientLog(tally)
                while (start := tally.next_call()) is not None:
                    try:
                        await predict(request, timeout=timeout_s)
                    except grpc.RpcError as err:
                        tally.error(err)
                        await asyncio.sleep(0.01)
                        continue
                    log.done(start)
                log.close()

            def blocking_client() -> None:
                log = _ClientLog(tally)
                while (start := tally.next_call()) is not None:
                    try:
                        sync_predict(request, timeout=timeout_s)
                    except grpc.RpcError as err:
                        tally.error(err)
                        time.sleep(0.01)
                        continue
                    log.done(start)
                log.close()

            async def meter() -> tuple[float, float, float, float, ServerStats]:
                """Wall, client CPU, server CPU and others' cores over the window; the counters at its start."""
                await asyncio.sleep(max(tally.window[0] - time.perf_counter(), 0))
                counted = opening or await asyncio.to_thread(server.stats)
                t0, c0, s0 = time.perf_counter(), time.process_time(), server.cpu_s()
                other = OtherLoad(lambda: time.process_time() + server.cpu_s())
                await asyncio.sleep(max(tally.window[1] - time.perf_counter(), 0))
                return time.perf_counter() - t0, time.process_time() - c0, server.cpu_s() - s0, other.cores(), counted

            clients = [asyncio.to_thread(blocking_client)] if blocking else \
                [client() for _ in range(scenario.clients)]
            results = await asyncio.gather(meter(), *clients)
            wall, client_cpu, server_cpu, scenario.other_cores, first = results[0]
            counted = (await asyncio.to_thread(server.stats)).since(first)  # every call has returned
    finally:
        if sync_channel is not None:
            sync_channel.close()
    scenario.calls = len(tally.latencies)
    scenario.images_per_s = sum(tally.rates)
    ms = np.array(tally.latencies) * 1e3
    if len(ms):
        scenario.p50_ms, scenario.p99_ms = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
        scenario.mean_ms = float(ms.mean())
    scenario.client_cores = client_cpu / wall
    scenario.server_cores = server_cpu / wall
    batches = scenario.server_batches = counted.batches
    scenario.server_mean_batch = counted.batch_images / batches if batches else 0.0
    scenario.server_model_ms = counted.model_s * 1e3 / batches if batches else 0.0
    scenario.server_answer_ms = counted.answer_s * 1e3 / counted.requests if counted.requests else 0.0
    return ms


def single_image_latency(server: Served, model, shape: tuple[int, int, int], label: str,
                         args: argparse.Namespace) -> tuple[Scenario, dict]:
    """The one-client, one-image scenario, interleaved with the in-process batch-1 forward.

    ``--latency-rounds`` rounds of (in-process ``classify`` of one image, then the server with one
    client), each ``duration_s / rounds`` long: the machine's speed drifts by tens of percent over
    minutes here (a ResNet-18 forward went from 30 to 50 ms), which would swamp a 1 ms difference
    between figures taken minutes apart. Even so, a forward in this process and one in the
    server's differ by several ms either way for ResNet-18 (each process slows the other's
    threads). So the added latency is the mean call time minus the mean time the server's own
    model forward took for those calls (from its metrics: same process, same moments); the
    p50 difference against the in-process forward is kept beside it, with its per-round spread.
    The added latency is split by the server's own time per call (also from its metrics): the
    server's Python path (checks, hand-over to the batcher thread and back, the reply) and the
    rest, gRPC transport and the load generator, which no server code runs in.
    """
    rounds = args.latency_rounds
    per = args.duration_s / rounds
    request = predict_request(random_images(shape, 1, seed=1))
    one = random_images(shape, 1, seed=0)
    served, local, parts, local_p50, added = [], [], [], [], []
    for _ in range(rounds):
        local_ms = np.array(time_calls(lambda: classify(model, one), per, 10, 100_000)) * 1e3
        part = Scenario(label, 1, 1)
        ms = asyncio.run(load(server, request, part, min(args.warmup_s, 0.5), per, args.max_calls, args.timeout_s))
        served.append(ms)
        local.append(local_ms)
        parts.append(part)
        local_p50.append(float(np.median(local_ms)))
        added.append(part.p50_ms - local_p50[-1])
    ms = np.concatenate(served)
    merged = Scenario(label, 1, 1, calls=sum(p.calls for p in parts), errors=sum(p.errors for p in parts),
                      images_per_s=statistics.mean(p.images_per_s for p in parts),
                      p50_ms=float(np.percentile(ms, 50)) if len(ms) else 0.0,
                      p99_ms=float(np.percentile(ms, 99)) if len(ms) else 0.0,
                      mean_ms=float(ms.mean()) if len(ms) else 0.0,
                      client_cores=statistics.mean(p.client_cores for p in parts),
                      server_cores=statistics.mean(p.server_cores for p in parts),
                      server_mean_batch=statistics.mean(p.server_mean_batch for p in parts),
                      server_batches=sum(p.server_batches for p in parts),
                      other_cores=max(p.other_cores for p in parts),
                      error_examples=[e for p in parts for e in p.error_examples][:3])
    # one image per call: a batch per call, so the batch count weighs both per-call means
    merged.server_model_ms, merged.server_answer_ms = (
        (sum(getattr(p, f) * p.server_batches for p in parts) / merged.server_batches
         if merged.server_batches else float("nan"))  # the server counted no batch in any round
        for f in ("server_model_ms", "server_answer_ms"))
    local_all = float(np.median(np.concatenate(local)))
    return merged, {"in_process_batch1_ms": local_all, "added_over_in_process_ms": merged.p50_ms - local_all,
                    "server_forward_ms": merged.server_model_ms, "added_ms": merged.mean_ms - merged.server_model_ms,
                    "in_server_ms": merged.server_answer_ms - merged.server_model_ms,
                    "transport_ms": merged.mean_ms - merged.server_answer_ms,
                    "rounds": [{"in_process_p50_ms": a, "server_p50_ms": p.p50_ms, "added_over_in_process_ms": d,
                                "server_mean_ms": p.mean_ms, "server_forward_ms": p.server_model_ms}
                               for a, p, d in zip(local_p50, parts, added)]}


def predict_request(images: np.ndarray) -> bytes:
    """A serialised PredictRequest of uint8 HWC ``images``: built once, sent as bytes by every call."""
    return defense_pb2.PredictRequest(images=[im.tobytes() for im in images]).SerializeToString()


def check_labels(server: Served, model, shape: tuple[int, int, int]) -> bool:
    """The server answers what the in-process model answers for images like the bench's requests."""
    images = random_images(shape, 8, seed=1)
    with DefenseClient(server.target, timeout_s=60, retries=2) as client:
        return bool(np.array_equal(client.predict(images), classify(model, images)))


# --- main --------------------------------------------------------------------------------

def bench_model(name: str, args: argparse.Namespace, tmp: Path) -> dict:
    arch, shape, classes, _ = MODELS[name]
    log(f"[{name}] exporting a random-weight {arch} ({'x'.join(map(str, shape))}, {classes} classes)")
    art_dir = build_artifact(name, tmp)
    model = load_artifact(art_dir).model
    log(f"[{name}] in-process classify at batch {args.max_batch_size} and 1 ({args.threads} torch threads)")
    base = in_process(model, shape, args.max_batch_size, args.duration_s)
    log(f"[{name}]   {base['images_per_s']:.0f} images/s at batch {args.max_batch_size}, "
        f"batch 1 {base['batch1_ms']:.2f} ms; other processes used {base['other_cores']:.2f} cores")
    scenarios: list[Scenario] = []
    with defense_server(art_dir, args, max(DEFAULTS.max_images_per_request, args.batch_images)) as server:
        same = check_labels(server, model, shape)
        log(f"[{name}] server on {server.target}, counters from {server.metrics_url}; labels match in-process: "
            f"{same}")
        plans = [(f"{n}-client{'s' if n > 1 else ''}", n, 1) for n in args.clients]
        if args.batch_images:
            plans.append((f"batch{args.batch_images}-client", 1, args.batch_images))
        latency = None
        for label, clients, per_call in plans:
            if clients == 1 and per_call == 1 and latency is None:
                log(f"[{name}] {label}: {args.latency_rounds} rounds of in-process batch 1 and then the server, "
                    f"{args.duration_s / args.latency_rounds:.1f} s each ...")
                scenario, latency = single_image_latency(server, model, shape, label, args)
                log(f"[{name}]   server forward {latency['server_forward_ms']:.2f} ms, the call adds "
                    f"{latency['added_ms']:.2f} ms to it ({latency['in_server_ms']:.2f} in the server, "
                    f"{latency['transport_ms']:.2f} in transport and client); "
                    f"in-process batch 1 {latency['in_process_batch1_ms']:.2f} ms, "
                    f"{latency['added_over_in_process_ms']:.2f} ms less than a call (per round: "
                    f"{', '.join(format(r['added_over_in_process_ms'], '.2f') for r in latency['rounds'])})")
            else:
                scenario = Scenario(label, clients, per_call)
                log(f"[{name}] {label}: {args.warmup_s:.1f} s warm-up + {args.duration_s:.1f} s ...")
                asyncio.run(load(server, predict_request(random_images(shape, per_call, seed=1)), scenario,
                                 args.warmup_s, args.duration_s, args.max_calls, args.timeout_s))
            log(f"[{name}]   {scenario.images_per_s:.0f} images/s, p50 {scenario.p50_ms:.2f} ms, "
                f"p99 {scenario.p99_ms:.2f} ms, {scenario.calls} calls, {scenario.errors} errors, "
                f"mean server batch {scenario.server_mean_batch:.1f}, "
                f"cores: server {scenario.server_cores:.2f} client {scenario.client_cores:.2f} "
                f"other {scenario.other_cores:.2f}")
            scenarios.append(scenario)
    if args.echo:
        clients = max(args.clients)
        label = f"echo {clients}-client{'s' if clients > 1 else ''}"
        log(f"[{name}] {label} (no model: the gRPC ceiling): "
            f"{args.warmup_s:.1f} s warm-up + {args.duration_s:.1f} s ...")
        scenario = Scenario(label, clients, 1)
        with echo_server() as echo:
            asyncio.run(load(echo, predict_request(random_images(shape, 1, seed=1)), scenario, args.warmup_s,
                             args.duration_s, args.max_calls, args.timeout_s))
        log(f"[{name}]   {scenario.images_per_s:.0f} images/s, p50 {scenario.p50_ms:.2f} ms, "
            f"cores: server {scenario.server_cores:.2f} client {scenario.client_cores:.2f} "
            f"other {scenario.other_cores:.2f}")
        scenarios.append(scenario)
    log(f"[{name}] in-process again (drift check)")
    again = in_process(model, shape, args.max_batch_size, args.duration_s)
    return {"model": name, "arch": arch, "input": list(shape), "classes": classes, "labels_match": same,
            "in_process": base, "in_process_after": again, "batch1_latency": latency,
            "scenarios": [asdict(s) for s in scenarios]}


def summarise(results: list[dict], args: argparse.Namespace) -> list[tuple[str, float]]:
    figures: list[tuple[str, float]] = []
    for r in results:
        name, base, again = r["model"], r["in_process"], r["in_process_after"]
        # the faster of the two in-process runs is the reference: drift never flatters the server
        ref = max(base["images_per_s"], again["images_per_s"])
        one_ms = r["batch1_latency"]["in_process_batch1_ms"] if r["batch1_latency"] else \
            min(base["batch1_ms"], again["batch1_ms"])
        print(f"\n{name} ({'x'.join(map(str, r['input']))}, {r['classes']} classes); in-process classify: "
              f"{base['images_per_s']:.0f} / {again['images_per_s']:.0f} images/s at batch "
              f"{args.max_batch_size} (before / after), batch 1 {base['batch1_ms']:.2f} / "
              f"{again['batch1_ms']:.2f} ms; other processes: {base['other_cores']:.2f} / "
              f"{again['other_cores']:.2f} cores")
        print(f"  {'scenario':<18}{'images/s':>10}{'ratio':>8}{'p50 ms':>10}{'p99 ms':>10}{'calls':>8}"
              f"{'errors':>7}{'batch':>7}{'server':>8}{'client':>8}{'other':>7}")
        figures.append((f"{name} in-process images/s", ref))
        figures.append((f"{name} in-process batch1 ms", one_ms))
        for s in r["scenarios"]:
            ratio = s["images_per_s"] / ref
            print(f"  {s['name']:<18}{s['images_per_s']:>10.0f}{ratio:>8.2f}{s['p50_ms']:>10.2f}"
                  f"{s['p99_ms']:>10.2f}{s['calls']:>8}{s['errors']:>7}{s['server_mean_batch']:>7.1f}"
                  f"{s['server_cores']:>8.2f}{s['client_cores']:>8.2f}{s['other_cores']:>7.2f}")
            figures += [(f"{name} {s['name']} images/s", s["images_per_s"]),
                        (f"{name} {s['name']} p50 ms", s["p50_ms"]),
                        (f"{name} {s['name']} p99 ms", s["p99_ms"]),
                        (f"{name} {s['name']}/in-process ratio", ratio)]
        figures.append((f"{name} other-processes cores max", max(
            [base["other_cores"], again["other_cores"]] + [s["other_cores"] for s in r["scenarios"]])))
        if r["batch1_latency"]:
            figures += [(f"{name} batch1 server forward ms", r["batch1_latency"]["server_forward_ms"]),
                        (f"{name} batch1 added latency ms", r["batch1_latency"]["added_ms"]),
                        (f"{name} batch1 added in server ms", r["batch1_latency"]["in_server_ms"]),
                        (f"{name} batch1 added in transport ms", r["batch1_latency"]["transport_ms"]),
                        (f"{name} batch1 added over in-process ms", r["batch1_latency"]["added_over_in_process_ms"])]
        crowd = next((s for s in r["scenarios"] if s["name"] == "64-clients"), None)
        if crowd and name in GOAL_RATIO:
            ratio = crowd["images_per_s"] / ref
            print(f"  goal: 64 clients >= {GOAL_RATIO[name]:.0%} of in-process: {ratio:.0%}, "
                  f"{'met' if ratio >= GOAL_RATIO[name] else 'MISSED'}")
        if r["batch1_latency"]:
            lat = r["batch1_latency"]
            spread = [x["added_over_in_process_ms"] for x in lat["rounds"]]
            print(f"  goal: batch 1 adds <= {GOAL_ADDED_MS:.0f} ms over the model's own forward "
                  f"({lat['server_forward_ms']:.2f} ms in the server): {lat['added_ms']:.2f} ms, "
                  f"{'met' if lat['added_ms'] <= GOAL_ADDED_MS else 'MISSED'} ({lat['in_server_ms']:.2f} ms in the "
                  f"server's Python path, {lat['transport_ms']:.2f} ms in gRPC transport and the client); "
                  f"over the in-process forward "
                  f"({one_ms:.2f} ms): {lat['added_over_in_process_ms']:.2f} ms (rounds {min(spread):.2f} to "
                  f"{max(spread):.2f})")
        if not r["labels_match"] or any(s["errors"] for s in r["scenarios"]):
            print("  WARNING: errors or label mismatch; see the JSON")
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--models", default="resnet18,smallcnn",
                   help=f"comma-separated models to bench, from: {', '.join(MODELS)}")
    p.add_argument("--duration-s", type=float, default=5.0,
                   help="measured seconds per load scenario (and per in-process timing)")
    p.add_argument("--warmup-s", type=float, default=1.0, help="unmeasured seconds of load before each scenario")
    p.add_argument("--clients", default="1,8,64",
                   help="comma-separated counts of concurrent single-image clients, one scenario each")
    p.add_argument("--batch-images", type=int, default=64,
                   help="images per call of the one batching client (0 = skip that scenario)")
    p.add_argument("--max-batch-size", type=int, default=DEFAULTS.max_batch_size,
                   help="server --max-batch-size, and the batch of the in-process reference")
    p.add_argument("--max-delay-ms", type=float, default=DEFAULTS.max_delay_ms, help="server --max-delay-ms")
    p.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 2),
                   help="torch intra-op threads, in the server and the in-process reference alike")
    p.add_argument("--echo", action=argparse.BooleanOptionalAction, default=True,
                   help="also load a no-model gRPC server with the most clients: the ceiling of Python gRPC here")
    p.add_argument("--latency-rounds", type=int, default=5,
                   help="the 1-client scenario alternates this many times between in-process batch-1 forwards "
                        "and the server (drift-proof added latency); its --duration-s is split among them")
    p.add_argument("--max-calls", type=int, default=500_000, help="cap on calls per scenario (besides time)")
    p.add_argument("--timeout-s", type=float, default=60.0, help="deadline of every call")
    p.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown or not names:
        p.error(f"--models: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(MODELS)}")
    args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if any(c < 1 for c in args.clients) or min(args.max_batch_size, args.threads, args.latency_rounds) < 1 \
            or args.batch_images < 0 or args.duration_s <= 0 or args.warmup_s < 0:
        p.error("--clients, --max-batch-size, --threads and --latency-rounds must be >= 1, --batch-images >= 0, "
                "--duration-s > 0, --warmup-s >= 0")
    torch.set_num_threads(args.threads)

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    machine = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
    idle = OtherLoad()
    time.sleep(1.0)
    busy = idle.cores()
    log(f"machine: {machine}; other processes used {busy:.2f} cores in the second before the start")
    if busy > 0.2:
        log("note: the machine is not idle; the figures will be noisy (see the 'other' column)")
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        try:
            results = [bench_model(name, args, Path(tmp)) for name in names]
        except ServerStartError as err:
            print(f"error: the server did not start: {err}", file=sys.stderr)
            return 1

    print(f"\nServer vs in-process on {machine}: server and load generator share the machine's cores;\n"
          f"{args.threads} torch threads, max batch {args.max_batch_size}, max delay {args.max_delay_ms} ms; "
          f"ratio = server images/s / in-process images/s at batch {args.max_batch_size}")
    figures = summarise(results, args)
    if args.json:
        atomic_write_text(args.json, json.dumps({
            "machine": machine, "other_cores_before": busy, "args": {k: v for k, v in vars(args).items()
                                                                        if k != "json"},
            "results": results, "figures": dict(figures)}, indent=2) + "\n")
    print()
    for name, value in figures:
        print(f"{name}: {value:.2f}" if abs(value) < 1000 else f"{name}: {value:.0f}")
    ok = all(r["labels_match"] and not any(s["errors"] for s in r["scenarios"]) for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
