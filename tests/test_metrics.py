"""Prometheus metrics over HTTP (``serve --metrics-port``): calls by method and status code, images, per-forward
histograms, queue, calls in flight and budgets, read by scraping as Prometheus would; off by default; JSON logs."""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from model_fixtures import SHAPE, LiveServer, SlowForward, make_artifact

from avc_common.artifact import Artifact, load_artifact
from avc_common.rpc import defense_pb2, defense_pb2_grpc
from avc_common.rpc.credentials import token_sha256
from defense.callers import Caller
from defense.cli import main
from defense.metrics import samples
from defense.process import ServerProcess, free_port, wait_serving

ROOT = Path(__file__).resolve().parent.parent
PREDICT, INFO, CHECK = "/defense.v1.Defense/Predict", "/defense.v1.Defense/ModelInfo", "/grpc.health.v1.Health/Check"
TOKENS = {"team-a": "token-a", "team-b": "token-b", "free": "token-free"}
BUDGETS = {"team-a": 10, "team-b": 5, "free": 0}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("art") / "artifact")


@pytest.fixture(scope="module")
def artifact(artifact_dir) -> Artifact:
    return load_artifact(artifact_dir)


def metrics_url(live: LiveServer) -> str:
    return f"http://127.0.0.1:{live.server.metrics.port}/metrics"


def value(found: dict, name: str, **labels: str) -> float | None:
    """One sample of a scrape (:func:`defense.metrics.samples`), or None if the endpoint did not give it."""
    return found.get((name, tuple(sorted(labels.items()))))


def request(n: int) -> defense_pb2.PredictRequest:
    images = np.random.default_rng(n).integers(0, 256, (n, *SHAPE), dtype=np.uint8)
    return defense_pb2.PredictRequest(images=[im.tobytes() for im in images])


def test_a_scrape_counts_every_call_by_method_and_code_the_images_the_forwards_and_each_budget(artifact):
    callers = tuple(Caller(name, token_sha256(token), BUDGETS[name]) for name, token in TOKENS.items())
    live = LiveServer(artifact, max_images_per_request=8, max_batch_size=8, callers=callers, metrics_port=0)
    try:
        team_a, team_b = ([("authorization", f"Bearer {TOKENS[name]}")] for name in ("team-a", "team-b"))
        refused = []
        with grpc.insecure_channel(live.target) as channel:
            stub = defense_pb2_grpc.DefenseStub(channel)
            stub.Predict(request(3), metadata=team_a, timeout=10)
            stub.Predict(request(5), metadata=team_a, timeout=10)
            for call, body, metadata in [
                (stub.Predict, defense_pb2.PredictRequest(), team_a),  # empty: INVALID_ARGUMENT
                (channel.unary_unary(PREDICT), b"\xff\xff", team_a),  # not a protobuf: INVALID_ARGUMENT
                (stub.Predict, request(3), team_a),  # 8 of team-a's 10 spent: RESOURCE_EXHAUSTED, final
                (stub.Predict, request(20), team_a),  # over the message size: refused by gRPC, no handler runs
                (stub.Predict, request(1), None),  # no token: UNAUTHENTICATED
                (channel.unary_unary("/defense.v1.Defense/Nope"), b"", None),  # UNIMPLEMENTED
            ]:
                with pytest.raises(grpc.RpcError) as caught:
                    call(body, metadata=metadata, timeout=10)
                refused.append(caught.value.code().name)
            stub.ModelInfo(defense_pb2.ModelInfoRequest(), metadata=team_b, timeout=10)
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert refused == ["INVALID_ARGUMENT", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED",
                           "UNAUTHENTICATED", "UNIMPLEMENTED"]
        found = samples(metrics_url(live))  # every call above has returned: each is counted, exactly
        handled = {labels: n for (name, labels), n in found.items() if name == "defense_requests_total"}
        assert handled == {(("code", "OK"), ("method", PREDICT)): 2,
                           (("code", "INVALID_ARGUMENT"), ("method", PREDICT)): 2,
                           (("code", "RESOURCE_EXHAUSTED"), ("method", PREDICT)): 1,
                           (("code", "UNAUTHENTICATED"), ("method", PREDICT)): 1,
                           (("code", "OK"), ("method", INFO)): 1, (("code", "OK"), ("method", CHECK)): 1,
                           (("code", "UNIMPLEMENTED"), ("method", "unknown")): 1}
        # the oversize call started but no server code saw it end: started - handled is what gRPC refused itself
        assert value(found, "defense_calls_started_total", method=PREDICT) == 7
        assert value(found, "defense_images_total") == 8 and value(found, "defense_answer_seconds_count") == 2
        # one forward per answered call (the warm-up forward at batch 8 is not traffic), of 3 and of 5 images
        assert value(found, "defense_batch_size_count") == 2 and value(found, "defense_batch_size_sum") == 8
        assert [value(found, "defense_batch_size_bucket", le=le) for le in ("2.0", "4.0", "8.0", "+Inf")] == \
            [0, 1, 2, 2]
        assert value(found, "defense_model_seconds_count") == 2 and value(found, "defense_model_seconds_sum") > 0
        assert value(found, "defense_queued_images") == 0 and value(found, "defense_inflight_calls") == 0
        budgets = {labels: n for (name, labels), n in found.items() if name == "defense_query_budget_remaining"}
        assert budgets == {(("caller", "team-a"),): 2, (("caller", "team-b"),): 5}  # "free" has no budget
        assert value(found, "process_cpu_seconds_total") > 0
    finally:
        live.close()


def test_the_gauges_show_calls_in_flight_and_images_queued_under_load(artifact):
    """Two calls of 2 images, forwards of at most 2 taking 0.6 s each: while the first is in the model, both calls
    are in flight and the second one's images are queued."""
    live = LiveServer(Artifact(SlowForward(artifact.model, per_image_s=0.3), artifact.manifest), max_batch_size=2,
                      metrics_port=0)
    try:
        with grpc.insecure_channel(live.target) as channel, ThreadPoolExecutor(2) as pool:
            stub = defense_pb2_grpc.DefenseStub(channel)
            calls = [pool.submit(stub.Predict, request(2), timeout=30) for _ in range(2)]
            loaded, deadline = None, time.monotonic() + 20
            while loaded != (2, 2) and time.monotonic() < deadline:
                found = samples(metrics_url(live))
                loaded = value(found, "defense_inflight_calls"), value(found, "defense_queued_images")
            assert loaded == (2, 2)
            assert all(len(call.result().labels) == 2 for call in calls)
        found = samples(metrics_url(live))
        assert value(found, "defense_inflight_calls") == 0 and value(found, "defense_queued_images") == 0
        # each forward slept 0.6 s: both land above the 0.5 s bound
        assert value(found, "defense_model_seconds_bucket", le="0.5") == 0
        assert value(found, "defense_model_seconds_count") == 2 and value(found, "defense_model_seconds_sum") >= 1.2
        assert value(found, "defense_query_budget_remaining", caller="") is None  # no budget: no series
    finally:
        live.close()


def listening_ports() -> set[int]:
    """The TCP ports this process listens on (Linux /proc: its sockets' inodes in the kernel's tables)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # an fd closed meanwhile
            if (link := os.readlink(f"/proc/self/fd/{fd}")).startswith("socket:["):
                inodes.add(link[len("socket:["):-1])
    ports = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state, inode = row.split()[1], row.split()[3], row.split()[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def test_metrics_are_off_by_default_and_their_port_is_opened_only_when_asked_and_freed_at_stop(artifact):
    before = listening_ports()
    plain = LiveServer(artifact, warm=False)
    try:
        assert plain.server.metrics is None
        assert listening_ports() - before == {int(plain.target.rsplit(":", 1)[1])}  # the gRPC port alone
    finally:
        plain.close()
    measured = LiveServer(artifact, warm=False, metrics_port=0)
    metrics_port = measured.server.metrics.port
    try:
        assert listening_ports() - before == {int(measured.target.rsplit(":", 1)[1]), metrics_port}
    finally:
        measured.close()
    assert metrics_port not in listening_ports()


def test_serve_refuses_the_grpc_port_for_the_metrics_before_loading_the_model(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "none"), "--port", "50999", "--metrics-port", "50999"]) == 2
    err = capsys.readouterr().err
    assert "--metrics-port: expected a port other than --port's (50999)" in err and "Traceback" not in err


def test_serve_logs_json_lines_and_serves_metrics_on_the_port_it_logs(artifact_dir):
    port, metrics_port = free_port(), free_port()
    argv = [sys.executable, "-m", "defense", "serve", "--model", str(artifact_dir), "--port", str(port),
            "--threads", "1", "--metrics-port", str(metrics_port), "--log-format", "json"]
    with ServerProcess(argv, cwd=ROOT) as server:
        wait_serving(server, f"127.0.0.1:{port}", timeout_s=60)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            defense_pb2_grpc.DefenseStub(channel).Predict(request(2), timeout=10)
        found = samples(f"http://127.0.0.1:{metrics_port}/metrics")
        assert value(found, "defense_requests_total", method=PREDICT, code="OK") == 1
        assert value(found, "defense_requests_total", method=CHECK, code="OK") >= 1  # wait_serving's probes
        deadline = time.monotonic() + 20  # the throughput line comes within a second or so of the traffic
        while '"interval"' not in server.log_tail(1000) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.stop() == 0
        lines = [json.loads(line) for line in server.log_tail(1000).splitlines()]  # every line is one JSON object
    assert lines and all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    assert any(line["message"] == f"Prometheus metrics on http://127.0.0.1:{metrics_port}/metrics" for line in lines)
    throughput = next(line for line in lines if "interval" in line)
    assert throughput["logger"] == "defense.server" and throughput["level"] == "INFO"
    assert (throughput["interval"]["requests"], throughput["interval"]["images"]) == (1, 2)
