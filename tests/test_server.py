"""The gRPC server end to end on loopback: labels, refusals, budget, batching, health, reflection, SIGTERM."""
from __future__ import annotations

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
from avc_common.rpc import defense_pb2, defense_pb2_grpc
from avc_common.rpc.client import BudgetExhaustedError, DefenseClient, ServerUnavailableError
from defense.batcher import classify
from defense.cli import main
from defense.process import ServerProcess, free_port, wait_serving
from defense.server import DefenseServer
from defense.stats import INTERVAL_S, ServerStats, fresh

ROOT = Path(__file__).resolve().parent.parent
NBYTES = 28 * 28
EXPECTED = "784 = 28 x 28 x 1 uint8 HWC"
INVALID = grpc.StatusCode.INVALID_ARGUMENT


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


def test_sigterm_lets_the_in_flight_call_finish_and_exits_0(artifact_dir, artifact):
    # A long batching delay keeps a one-image call in flight while the signal arrives.
    proc = subprocess.Popen(
        [sys.executable, "-m", "defense", "serve", "--model", str(artifact_dir), "--host", "127.0.0.1",
         "--port", "0", "--max-delay-ms", "1500", "--max-batch-size", "8", "--threads", "1"],
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
            call = defense_pb2_grpc.DefenseStub(channel).Predict.future(
                defense_pb2.PredictRequest(images=[images[0].tobytes()]), timeout=30)
            time.sleep(0.5)  # the call is now waiting in the batcher
            assert not call.done()
            proc.send_signal(signal.SIGTERM)
            assert list(call.result().labels) == classify(artifact.model, images).tolist()
        assert proc.wait(timeout=30) == 0
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
