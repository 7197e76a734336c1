"""The gRPC server end to end on loopback: labels, refusals, budget, caps, batching, health, reflection, SIGTERM."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st
from model_fixtures import SHAPE, LiveServer, SlowForward, make_artifact

from avc_common.artifact import Artifact, load_artifact
from avc_common.images import ImageShape
from avc_common.rpc import PUSHBACK_KEY, defense_pb2, defense_pb2_grpc
from avc_common.rpc.client import BudgetExhaustedError, DefenseClient, ServerUnavailableError
from defense.batcher import classify
from defense.cli import main
from defense.process import ServerProcess, free_port, wait_serving
from defense.server import DefenseServer, ServerConfig
from defense.stats import INTERVAL_S, ServerStats, fresh
from defense.throttled_log import ThrottledLog

ROOT = Path(__file__).resolve().parent.parent
NBYTES = 28 * 28
EXPECTED = "784 = 28 x 28 x 1 uint8 HWC"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("art") / "artifact")


@pytest.fixture(scope="module")
def artifact(artifact_dir) -> Artifact:
    return load_artifact(artifact_dir)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def live(artifact):
    server = LiveServer(artifact, max_images_per_request=256, max_batch_size=64, max_delay_ms=5)
    yield server
    server.close()


@pytest.fixture(scope="module")
def client(live):
    with DefenseClient(live.target, timeout_s=10) as c:
        yield c


@pytest.fixture(scope="module")
def stub(live):
    with grpc.insecure_channel(live.target) as channel:
        yield defense_pb2_grpc.DefenseStub(channel)


def random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *SHAPE), dtype=np.uint8)


def assert_good_request_succeeds(stub, artifact) -> None:
    images = random_images(3, seed=1)
    reply = stub.Predict(defense_pb2.PredictRequest(images=[im.tobytes() for im in images]), timeout=10)
    assert list(reply.labels) == classify(artifact.model, images).tolist()


def test_predictions_equal_the_in_process_model(client, artifact):
    images = random_images(100)
    expected = classify(artifact.model, images)
    assert len(set(expected.tolist())) > 1
    labels = client.predict(images)
    assert labels.dtype == np.int64 and np.array_equal(labels, expected)


def test_model_info(client):
    spec = client.info()
    assert spec.model.shape == SHAPE and spec.model.num_classes == 10
    assert spec.class_names == tuple(f"c{i}" for i in range(10))
    assert spec.max_images_per_request == 256 and spec.budget_total == 0 and spec.budget_remaining == -1


@pytest.mark.parametrize("images,code,message", [
    ([b"\0" * NBYTES, b"\0" * 100], INVALID, f"image 1 has 100 bytes; expected {EXPECTED}"),
    ([b"\0" * (NBYTES + 1)], INVALID, f"image 0 has 785 bytes; expected {EXPECTED}"),
    ([], INVALID, f"empty request: send 1 to 256 images of {EXPECTED} bytes"),
    ([b"\0" * NBYTES] * 257, INVALID, f"257 images in one request; at most 256 .*{EXPECTED}"),
    ([b"\0" * NBYTES] * 400, grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),  # refused by gRPC itself
], ids=["wrong-length", "one-byte-over", "empty", "too-many", "oversize-message"])
def test_malformed_request_is_refused_and_the_server_keeps_serving(stub, artifact, images, code, message):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(defense_pb2.PredictRequest(images=images), timeout=10)
    assert caught.value.code() == code
    assert re.search(message, caught.value.details())
    assert_good_request_succeeds(stub, artifact)


requests = st.one_of(
    st.lists(st.one_of(st.binary(max_size=2 * NBYTES), st.binary(min_size=NBYTES, max_size=NBYTES)), max_size=6),
    st.integers(250, 300).map(lambda n: [b"\1" * NBYTES] * n),
)


@settings(max_examples=50, deadline=None)
@given(images=requests)
def test_random_requests_get_labels_or_a_clean_refusal(stub, artifact, images):
    try:
        reply = stub.Predict(defense_pb2.PredictRequest(images=images), timeout=10)
    except grpc.RpcError as err:
        well_formed = 0 < len(images) <= 256 and all(len(im) == NBYTES for im in images)
        assert not well_formed
        if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            assert len(images) > 256
        else:
            assert err.code() == INVALID and EXPECTED in err.details()  # noqa: PT017 - the property holds per input
    else:
        assert len(reply.labels) == len(images) and all(0 <= label < 10 for label in reply.labels)
    assert_good_request_succeeds(stub, artifact)


def test_a_body_that_is_not_protobuf_is_invalid_argument_logged_once_and_counted(artifact, caplog):
    """Garbage bytes to any method (reflection's stream too) get INVALID_ARGUMENT with a one-line reason, not grpc's
    UNKNOWN with a traceback in the log per call: 57 of them leave one log line, and the counters have them all."""
    caplog.set_level(logging.INFO)
    server = LiveServer(artifact, max_batch_size=8)
    try:
        with grpc.insecure_channel(server.target) as channel:  # no serializers: the bytes go out as they are
            raw = {path: channel.unary_unary(path) for path in
                   ("/defense.v1.Defense/Predict", "/defense.v1.Defense/ModelInfo", "/grpc.health.v1.Health/Check")}
            reflect = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
            calls = [raw[path] for path, n in zip(raw, (50, 3, 3), strict=True) for _ in range(n)]
            for call in [*calls, lambda body, timeout: list(reflect(iter([body]), timeout=timeout))]:
                with pytest.raises(grpc.RpcError) as caught:
                    call(b"not a protobuf", timeout=10)
                assert caught.value.code() == INVALID
                assert re.fullmatch(r"the body \(14 bytes\) is not a serialized [\w.]+Request", caught.value.details())
            assert_good_request_succeeds(defense_pb2_grpc.DefenseStub(channel), artifact)
        stats = server.run(_stats(server.server))
    finally:
        server.close()
    assert (stats.unparsable, stats.errors, stats.requests) == (57, 0, 1)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    lines = [r.getMessage() for r in caplog.records if "not a protobuf" in r.getMessage()]
    assert len(lines) == 1 and "14-byte body to /defense.v1.Defense/Predict" in lines[0], lines


def test_throttled_log_keeps_one_line_per_kind_per_interval_and_counts_the_rest(caplog):
    now = [0.0]
    log = ThrottledLog(logging.getLogger("test.throttled"), interval_s=10, clock=lambda: now[0])
    for t, kind in [(0, "a"), (1, "a"), (2, "b"), (5, "a"), (9.9, "a"), (10, "a"), (11, "a"), (25, "a")]:
        now[0] = t
        log.warning(kind, "event %s at %g", kind, t)
    assert [r.getMessage() for r in caplog.records] == [
        "event a at 0", "event b at 2", "event a at 10 (3 more suppressed)", "event a at 25 (1 more suppressed)"]


def test_many_concurrent_clients_are_batched(live, client, artifact):
    images = random_images(16 * 50, seed=2)
    expected = classify(artifact.model, images)
    before = live.server.batcher.stats

    def one_client(t: int) -> list[int]:
        return [int(client.predict(images[i:i + 1])[0]) for i in range(t * 50, (t + 1) * 50)]

    with ThreadPoolExecutor(16) as pool:
        labels = [label for chunk in pool.map(one_client, range(16)) for label in chunk]
    after = live.server.batcher.stats
    assert labels == expected.tolist()
    assert after.images - before.images == 800
    assert after.batches - before.batches < 800, "no two requests ever shared a batch"


def test_client_splits_a_large_batch_to_the_server_limit(live, client, artifact):
    images = random_images(600, seed=3)
    before = live.server.servicer.counters.requests
    assert np.array_equal(client.predict(images), classify(artifact.model, images))
    assert live.server.servicer.counters.requests - before == 3  # 256 + 256 + 88


def test_client_checks_shape_and_dtype(client):
    with pytest.raises(ValueError, match="expected uint8 N x 28 x 28 x 1"):
        client.predict(np.zeros((2, 28, 28, 3), np.uint8))
    with pytest.raises(ValueError, match="got float32"):
        client.predict(np.zeros((2, 28, 28, 1), np.float32))
    assert client.predict(np.zeros((0, 28, 28, 1), np.uint8)).shape == (0,)


def test_client_gives_up_on_an_unreachable_server():
    with DefenseClient("127.0.0.1:1", timeout_s=0.2, retries=2, backoff_s=0.01) as c, \
            pytest.raises(ServerUnavailableError) as caught:
        c.info()
    assert caught.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_budget_is_spent_per_image_and_refuses_whole_requests(artifact):
    server = LiveServer(artifact, query_budget=10, max_batch_size=8)
    try:
        with DefenseClient(server.target, timeout_s=10) as c:
            assert (c.info().budget_total, c.info().budget_remaining) == (10, 10)
            c.predict(random_images(6))
            assert c.info().budget_remaining == 4
            with pytest.raises(BudgetExhaustedError, match="5 images requested, 4 of 10 left") as caught:
                c.predict(random_images(5))
            assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert c.info().budget_remaining == 4  # the refused request was not counted
            c.predict(random_images(4))
            assert c.info().budget_remaining == 0
            with pytest.raises(BudgetExhaustedError):
                c.predict(random_images(1))
            assert c.health() == "SERVING"
    finally:
        server.close()


def test_caps_default_to_shares_of_the_memory_limit():
    """A quarter of 4 GiB for queued images at 3 copies each and a quarter for calls at 32 KiB each, never so low that a
    full request or batch cannot be queued (defense/limits.py)."""
    assert ServerConfig().caps(ImageShape(28, 28, 1)) == (32768, 2**30 // (3 * 784))
    assert ServerConfig(memory_mib=8192).caps(ImageShape(64, 64, 3)) == (65536, 2**31 // (3 * 12288))
    assert ServerConfig(memory_mib=1, max_batch_size=300).caps(ImageShape(64, 64, 3)) == (8, 300)
    assert ServerConfig(max_concurrent_calls=5, max_queued_images=7).caps(ImageShape(28, 28, 1)) == (5, 7)


def test_cli_refuses_a_queue_cap_below_one_full_request_with_exit_2(capsys):
    assert main(["serve", "--model", "unused", "--max-queued-images", "100"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--max-queued-images: expected at least 256" in err and "got 100" in err


def test_a_full_server_refuses_with_a_retry_hint_and_charges_nothing(artifact):
    """Past --max-queued-images or --max-concurrent-calls a Predict gets RESOURCE_EXHAUSTED with gRPC's retry pushback
    in its trailers, is not charged to the query budget, and the calls already taken are all answered."""
    gated = GatedForward(artifact.model)
    server = LiveServer(Artifact(gated, artifact.manifest), warm=False, max_batch_size=1, max_images_per_request=3,
                        max_queued_images=5, max_concurrent_calls=4, query_budget=100)
    try:
        stub = defense_pb2_grpc.DefenseStub(grpc.insecure_channel(server.target))

        def send(n: int) -> grpc.Future:
            return stub.Predict.future(defense_pb2.PredictRequest(images=[bytes(NBYTES)] * n), timeout=30)

        def refused(n: int, flag: str) -> None:
            err = send(n).exception(timeout=30)
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and flag in err.details(), err.details()
            assert "not charged" in err.details()
            assert 10 <= int(dict(err.trailing_metadata())[PUSHBACK_KEY]) <= 1000

        taken = [send(1)]  # in the model until the gate opens
        assert gated.entered.wait(30)
        taken.append(send(3))
        assert wait_until(lambda: server.server.batcher.queued_images == 3)
        refused(3, "--max-queued-images")  # 3 queued + 3 > 5
        taken += [send(1), send(1)]
        assert wait_until(lambda: server.server.batcher.queued_images == 5)
        refused(1, "--max-concurrent-calls")  # 4 calls waiting: that cap is checked first
        remaining = stub.ModelInfo(defense_pb2.ModelInfoRequest(), timeout=30).query_budget_remaining
        assert remaining == 100 - 6  # the refused calls were not charged
        gated.gate.set()
        assert [len(call.result(timeout=30).labels) for call in taken] == [1, 3, 1, 1]
        stats = server.run(_stats(server.server))
        assert (stats.busy, stats.requests, stats.errors) == (2, 4, 0)
    finally:
        gated.gate.set()
        server.close()


def test_the_client_waits_out_a_full_server_instead_of_failing(artifact):
    """Twelve callers at once against caps of 2 calls and 4 queued images: every busy refusal carries the retry
    hint, so the client pauses and sends again; all get their labels and the budget is charged once per image."""
    server = LiveServer(artifact, max_batch_size=2, max_images_per_request=2, max_queued_images=4,
                        max_concurrent_calls=2, query_budget=1000)
    try:
        with DefenseClient(server.target, timeout_s=30) as client, ThreadPoolExecutor(12) as pool:
            images = random_images(24)
            labels = list(pool.map(client.predict, [images[i:i + 2] for i in range(0, 24, 2)]))
            assert np.concatenate(labels).tolist() == classify(artifact.model, images).tolist()
            assert client.info().budget_remaining == 1000 - 24
        stats = server.run(_stats(server.server))
    finally:
        server.close()
    assert stats.busy > 0 and stats.requests == 12  # it was full, and nothing was computed twice


def test_health_is_not_serving_until_warmed_up(artifact):
    server = LiveServer(artifact, warm=False, max_batch_size=8)
    try:
        with DefenseClient(server.target, timeout_s=10) as c:
            assert c.health() == "NOT_SERVING" and c.health("defense.v1.Defense") == "NOT_SERVING"
            server.run(server.server.warm_up())
            assert c.health() == "SERVING" and c.health("defense.v1.Defense") == "SERVING"
    finally:
        server.close()


def test_health_serving(live):
    with grpc.insecure_channel(live.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "defense.v1.Defense"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(live):
    with grpc.insecure_channel(live.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                            timeout=10)
        names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"defense.v1.Defense", "grpc.health.v1.Health"} <= names


def test_cli_refuses_a_bad_artifact_with_exit_2(artifact_dir, tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert "not a model artifact" in capsys.readouterr().err
    for f in artifact_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "model.pt2").write_bytes(b"tampered")
    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert "does not match the manifest" in capsys.readouterr().err


def test_sigterm_answers_the_call_in_flight_ends_watch_streams_and_exits_0_well_within_the_grace(artifact_dir,
                                                                                                  artifact):
    """A long batching delay keeps a one-image call in flight while the signal arrives: the drain sends it to the model
    at once, an open health Watch stream gets NOT_SERVING and ends, and the process exits long before the 60 s grace
    period, which neither the delay nor the stream may hold."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "defense", "serve", "--model", str(artifact_dir), "--host", "127.0.0.1",
         "--port", "0", "--max-delay-ms", "60000", "--max-batch-size", "8", "--threads", "1", "--grace-s", "60"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    try:
        port, deadline = None, time.monotonic() + 60
        while True:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            if match := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                port = int(match[1])
            if "SERVING" in line:
                break
        images = random_images(1, seed=4)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = defense_pb2_grpc.DefenseStub(channel)
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=120)
            assert next(watch).status == SERVING
            call = stub.Predict.future(defense_pb2.PredictRequest(images=[images[0].tobytes()]), timeout=120)
            assert wait_until(lambda: stub.ModelInfo(defense_pb2.ModelInfoRequest(), timeout=10).queued_images == 1)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert list(call.result().labels) == classify(artifact.model, images).tolist()
            assert [reply.status for reply in watch] == [NOT_SERVING]  # then the stream ended, status OK
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - signalled < 15
    finally:
        proc.kill()
        proc.wait()


def read_stats_until(path: Path, done, timeout_s: float = 5 * INTERVAL_S) -> ServerStats:
    """The stats file's counters once ``done(stats)`` holds (the server rewrites it about once a second)."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = ServerStats.read(path)
        if done(stats) or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


def test_stats_file_counts_the_traffic_sent_while_serving_and_at_shutdown(artifact_dir, tmp_path):
    # bench/server.py splits a call's latency with these counters: they are an interface, the log line is not.
    stats_file, port = tmp_path / "stats.json", free_port()
    argv = [sys.executable, "-m", "defense", "serve", "--model", str(artifact_dir), "--host", "127.0.0.1",
            "--port", str(port), "--max-batch-size", "4", "--threads", "1", "--stats-file", str(stats_file)]
    with ServerProcess(argv, cwd=ROOT) as server:
        wait_serving(server, f"127.0.0.1:{port}", timeout_s=60)
        at_start = ServerStats.read(stats_file)  # written before SERVING
        assert (at_start.requests, at_start.batches, at_start.batch_images) == (0, 0, 0)  # the warm-up is not traffic
        with DefenseClient(f"127.0.0.1:{port}", timeout_s=10) as client:
            for n in (1, 2, 7):  # one after another: batches of 1, 2, then 4 + 3
                client.predict(random_images(n))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError):
            defense_pb2_grpc.DefenseStub(channel).Predict(defense_pb2.PredictRequest(images=[b"\0"]), timeout=10)
        stats = read_stats_until(stats_file, lambda s: s.errors == 1)
        assert (stats.requests, stats.images, stats.errors) == (3, 10, 1), server.log_tail()
        assert (stats.batches, stats.batch_images, stats.largest_batch) == (4, 10, 4)
        assert 0 < stats.model_s < stats.answer_s and stats.uptime_s > at_start.uptime_s
        with DefenseClient(f"127.0.0.1:{port}", timeout_s=10) as client:
            client.predict(random_images(5))
            now = fresh(stats_file, server.proc.pid)  # SIGUSR1: a snapshot at once, with the call just answered
            assert (now.requests, now.images, now.snapshot_requests) == (4, 15, 1)
            assert client.health() == "SERVING"  # the signal asked for a snapshot; it did not stop the server
        assert server.stop() == 0
    final = ServerStats.read(stats_file)  # written after the drain: the last call is counted
    assert (final.requests, final.images, final.errors, final.batches) == (4, 15, 1, 6)


class GatedForward(torch.nn.Module):
    """The artifact's model, but every forward waits for ``gate``: calls queue up behind the first one."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.sizes = model, []
        self.gate, self.entered = threading.Event(), threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        self.entered.set()
        assert self.gate.wait(30)
        return self.model(x)


def wait_until(condition, timeout_s: float = 30.0) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


async def _stats(server: DefenseServer) -> ServerStats:
    return server.stats()  # on the server's event loop, where its counters live


def test_a_draining_server_says_not_serving_and_stops_once_the_calls_in_flight_are_answered(artifact):
    """Through the drain health answers NOT_SERVING (to Check, and to an open Watch stream, which then ends), a new
    Predict gets UNAVAILABLE from the server itself and the call in flight is answered; the stop is over as soon as it
    is, long before the grace period, although another client keeps calling all along."""
    gated = GatedForward(artifact.model)
    gated.gate.set()  # for the warm-up
    server = LiveServer(Artifact(gated, artifact.manifest), max_batch_size=1)
    gated.gate.clear()
    gated.entered.clear()
    stop_calling = threading.Event()

    def keep_calling() -> None:
        with grpc.insecure_channel(server.target) as other:
            check = health_pb2_grpc.HealthStub(other).Check
            while not stop_calling.wait(0.005):
                with contextlib.suppress(grpc.RpcError):
                    check(health_pb2.HealthCheckRequest(), timeout=5)

    caller = threading.Thread(target=keep_calling)
    try:
        channel = grpc.insecure_channel(server.target)
        health, stub = health_pb2_grpc.HealthStub(channel), defense_pb2_grpc.DefenseStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=120)
        assert next(watch).status == SERVING
        images = random_images(1, seed=5)
        in_flight = stub.Predict.future(defense_pb2.PredictRequest(images=[images[0].tobytes()]), timeout=120)
        assert gated.entered.wait(30)
        caller.start()
        start = time.monotonic()
        stopping = asyncio.run_coroutine_threadsafe(server.server.stop(grace_s=60), server.loop)
        assert next(watch).status == NOT_SERVING
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == NOT_SERVING
        with pytest.raises(grpc.RpcError) as refused:
            stub.Predict(defense_pb2.PredictRequest(images=[images[0].tobytes()]), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in refused.value.details()
        assert not stopping.done()
        gated.gate.set()
        assert list(in_flight.result(timeout=30).labels) == classify(artifact.model, images).tolist()
        assert list(watch) == []  # the stream ended, status OK
        stopping.result(timeout=30)
        assert time.monotonic() - start < 15
        stats = server.run(_stats(server.server))
        assert (stats.requests, stats.draining) == (1, 1)
    finally:
        stop_calling.set()
        gated.gate.set()
        if caller.is_alive():
            caller.join()
        server.close()


def test_no_forward_and_no_budget_for_a_caller_who_left(artifact):
    """A queued call whose deadline passes, or whose caller cancels it, is dropped before the model runs and its
    images are given back to the query budget; the server then serves on."""
    gated = GatedForward(artifact.model)
    server = LiveServer(Artifact(gated, artifact.manifest), warm=False, max_batch_size=1, query_budget=100)
    try:
        stub = defense_pb2_grpc.DefenseStub(grpc.insecure_channel(server.target))
        one = defense_pb2.PredictRequest(images=[bytes(NBYTES)])
        first = stub.Predict.future(one, timeout=30)  # occupies the model until the gate opens
        assert gated.entered.wait(30)
        with pytest.raises(grpc.RpcError) as expired:
            stub.Predict(defense_pb2.PredictRequest(images=[bytes(NBYTES)] * 3), timeout=2)
        assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert wait_until(lambda: server.server.servicer.counters.dropped == 1)
        cancelled = stub.Predict.future(one, timeout=30)
        assert wait_until(lambda: server.server.batcher.queued_images == 1)  # queued behind the first call
        cancelled.cancel()
        assert wait_until(lambda: server.server.servicer.counters.dropped == 2)
        gated.gate.set()
        assert len(first.result(timeout=30).labels) == 1
        assert len(stub.Predict(one, timeout=30).labels) == 1  # still serving
        stats = server.run(_stats(server.server))
        assert gated.sizes == [1, 1]  # the first call and the last: nothing for the two that left
        assert (stats.dropped, stats.dropped_images, stats.requests) == (2, 4, 2)
        info = stub.ModelInfo(defense_pb2.ModelInfoRequest(), timeout=30)
        assert info.query_budget_remaining == 98  # charged for the two answered images only
    finally:
        gated.gate.set()
        server.close()


def test_a_busy_slow_server_is_waited_for_not_given_up_on(artifact):
    """Three clients at once, each call far longer than the client's idle deadline and no retries allowed: every
    call is answered, because deadlines follow the server's measured time per image and its queue, and a call
    that still runs out of time on a server that answers ModelInfo is sent again, not failed."""
    slow = SlowForward(artifact.model, per_image_s=0.02)
    server = LiveServer(Artifact(slow, artifact.manifest), max_batch_size=8)
    try:
        images = random_images(48)
        expected = classify(artifact.model, images)
        with DefenseClient(server.target, timeout_s=0.5, retries=0) as probe:
            info = probe.info()
            assert 0.01 < info.seconds_per_image < 0.2 and info.queued_images == 0  # measured on the warm-up
            assert probe.deadline_s(48) == pytest.approx(0.5 + 4 * info.seconds_per_image * 48)

        def one_client(_: int) -> np.ndarray:
            with DefenseClient(server.target, timeout_s=0.5, retries=0) as client:
                return client.predict(images)  # 6 forwards of 8: about 1 s alone, 3 s behind the others

        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(one_client, range(3)))
        assert all(np.array_equal(labels, expected) for labels in answers)
        stats = server.run(_stats(server.server))
        assert stats.requests == 3 and stats.images == 144
        assert stats.batch_images - stats.images <= 8 * stats.dropped  # a re-sent call wasted at most its forward
    finally:
        server.close()
