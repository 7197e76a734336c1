"""Beyond one machine: --target over several replicas (round_robin, one lost mid-score) and --ray scoring (the
single-process results, workers that load their surrogates once, a killed run that resumes from the driver)."""
from __future__ import annotations

import ast
import json
import logging
import sys
import threading
from pathlib import Path

import pytest
import test_score
from model_fixtures import LiveServer, make_artifact
from test_score import CHEAP, read, score

from attacks.scoring import cli as score_cli
from avc_common.artifact import load_artifact
from avc_common.rpc.client import DefenseClient
from avc_common.rpc.targets import TargetError, channel_target

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parent.parent
# test_score's model, evaluation folder and plot switch, shared (the same fixtures, not copies)
artifact_dir, folder, no_plots = test_score.artifact_dir, test_score.folder, test_score.no_plots


def images_of(out: Path) -> list[dict]:
    return read(out)["images"]


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster of 2 CPUs for the module's Ray scores (each starts its own workers on it)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


def test_several_addresses_become_one_round_robin_channel_and_a_bad_list_exits_2(capsys):
    assert channel_target("127.0.0.1:5001, 127.0.0.1:5002").target == "ipv4:127.0.0.1:5001,127.0.0.1:5002"
    assert channel_target("[::1]:5001,[::1]:5002").target == "ipv6:[::1]:5001,[::1]:5002"
    assert channel_target("localhost:5001,127.0.0.1:5002").target == "ipv4:127.0.0.1:5001,127.0.0.1:5002"
    for name in ("dns:///replicas.example:50051", "ipv4:10.0.0.1:50051,10.0.0.2:50051", "server:50051"):
        assert channel_target(name).target == name  # gRPC resolves these itself
    def config(text: str) -> dict:
        return json.loads(dict(channel_target(text, health_checked=True).options)["grpc.service_config"])

    assert config("server:50051") == {"loadBalancingConfig": [{"round_robin": {}}]}  # one server: no health watch
    for several in ("127.0.0.1:5001,127.0.0.2:5001", "dns:///replicas.example:50051"):
        assert config(several) == {"loadBalancingConfig": [{"round_robin": {}}],
                                   "healthCheckConfig": {"serviceName": ""}}
    for bad in ("127.0.0.1:5001,,127.0.0.1:5002", "127.0.0.1,127.0.0.1:5002", "127.0.0.1:0,127.0.0.1:5002"):
        with pytest.raises(TargetError, match="expected HOST:PORT"):
            channel_target(bad)
        with pytest.raises(SystemExit) as stop:
            score_cli.parse_args(["--target", bad])
        assert stop.value.code == 2 and "--target" in capsys.readouterr().err


def test_two_replicas_share_the_calls_and_one_stopped_mid_score_is_skipped(artifact_dir, folder, tmp_path,
                                                                           monkeypatch, no_plots):
    """Against two replicas the calls alternate; one stopped early in the score leaves the other to finish it,
    with the per-image results of a score against one server (so the per-image budget held)."""
    artifact = load_artifact(artifact_dir)
    args = ["--data", folder, *CHEAP]
    one = LiveServer(artifact, max_batch_size=1)  # one image per forward: labels cannot depend on the batching
    try:
        assert score("--target", one.target, *args, "--output", tmp_path / "one") == 0
    finally:
        one.close()
    first, second = LiveServer(artifact, max_batch_size=1), LiveServer(artifact, max_batch_size=1)
    predict, lock, seen = DefenseClient.predict, threading.Lock(), {"calls": 0}

    def stop_first_replica_midway(self, images):
        with lock:
            seen["calls"] += 1
            now = seen["calls"] == 30  # of about 170
        if now:
            seen["before"] = (first.server.stats().requests, second.server.stats().requests)
            first.close()
        return predict(self, images)

    monkeypatch.setattr(DefenseClient, "predict", stop_first_replica_midway)
    try:
        assert score("--target", f"{first.target},{second.target}", *args, "--output", tmp_path / "two") == 0
        after = second.server.stats().requests
    finally:
        second.close()
        if first.loop.is_running():
            first.close()
    assert all(n > 0 for n in seen["before"])  # round_robin: both replicas answered before the stop
    assert after > seen["before"][1] + 10  # and the second carried on alone
    assert images_of(tmp_path / "two") == images_of(tmp_path / "one")
    assert all(a["queries"] <= 40 for image in images_of(tmp_path / "two") for a in image["attacks"].values())


def test_ray_workers_score_as_one_process_load_surrogates_once_and_a_killed_run_resumes(
        ray_cluster, artifact_dir, folder, tmp_path, monkeypatch, no_plots):
    """Interrupted (Ctrl-C in the driver) after its first chunk, a --ray score leaves that chunk's state; the
    rerun does not redo it and ends with the single-process per-image results, saying how many workers ran."""
    surrogate = make_artifact(tmp_path / "surrogate", seed=1)
    args = ["--model", artifact_dir, "--data", folder, "--no-reference", "--surrogate", surrogate, *CHEAP,
            "--attacks", "contrast,transfer"]
    assert score(*args, "--output", tmp_path / "single") == 0

    reports, described = [], []
    write, close = score_cli.write_reports, None

    def interrupt_after_first_chunk(*a, **k):
        results = write(*a, **k)
        reports.append(1)
        if len(reports) == 1:
            raise KeyboardInterrupt
        return results

    from attacks.scoring import distributed

    close = distributed.RayWorkers.close

    def describing_close(self):
        described.append(ray_cluster.get([actor.describe.remote() for actor in self.actors]))
        close(self)

    monkeypatch.setattr(distributed.RayWorkers, "close", describing_close)
    monkeypatch.setattr(score_cli, "write_reports", interrupt_after_first_chunk)
    out = tmp_path / "ray"
    assert score(*args, "--ray", "--output", out) == score_cli.INTERRUPTED
    assert read(out)["summary"]["images"] == 4 and read(out)["error"] == "interrupted"
    saved = {path.name: path.stat().st_mtime_ns for path in (out / "state").iterdir()}
    assert {"c0000-a00.npz", "c0000-a01.npz", "c0000-verify.npz"} <= set(saved)

    monkeypatch.setattr(score_cli, "write_reports", write)
    assert score(*args, "--ray", "--output", out) == 0
    done = read(out)
    assert done["complete"] and done["workers"] == 2 and "2 Ray workers" in (out / "report.md").read_text()
    assert done["images"] == images_of(tmp_path / "single")
    assert {path.name: path.stat().st_mtime_ns for path in (out / "state").iterdir() if path.name in saved} == saved
    for run in described:  # each worker loaded its one surrogate once, for all its units (transfer ran on both)
        assert len({w["pid"] for w in run}) == 2 and [w["surrogate_loads"] for w in run] == [1, 1]


def test_a_chained_score_on_ray_workers_gives_the_single_process_results(ray_cluster, artifact_dir, folder, tmp_path,
                                                                         no_plots):
    """--chain on workers: each unit carries the adversarials of the one before it to whichever worker runs it."""
    args = ["--model", artifact_dir, "--data", folder, "--no-reference", *CHEAP, "--chain"]
    assert score(*args, "--output", tmp_path / "single") == 0
    assert score(*args, "--ray", "--output", tmp_path / "ray") == 0
    assert images_of(tmp_path / "ray") == images_of(tmp_path / "single") and read(tmp_path / "ray")["budget"]["chained"]


def test_ray_flags_are_checked_before_any_work_and_nothing_imports_ray_without_them(monkeypatch, capsys):
    for argv, message in ((["--model", "m", "--workers", "2"], "--workers: only with --ray or --ray-address"),
                          (["--target", "t:1", "--ray", "--concurrency", "2"], "--concurrency: not with --ray"),
                          (["--model", "m", "--ray-address", "auto"], "--ray-address: Ray is not installed here; "
                                                                      "pip install 'trades-avc[ray]'")):
        if "--ray-address" in argv:
            monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
        with pytest.raises(SystemExit) as stop:
            score_cli.parse_args(argv)
        assert stop.value.code == 2 and message in capsys.readouterr().err
    importing = {path.relative_to(ROOT).as_posix() for package in ("attacks", "avc_common", "defense")
                 for path in (ROOT / package).rglob("*.py")
                 for node in ast.parse(path.read_text()).body  # module level only: functions may import it
                 if isinstance(node, (ast.Import, ast.ImportFrom))
                 and any(name == "ray" or name.startswith(("ray.", "attacks.scoring.distributed"))
                         for name in ([a.name for a in node.names] if isinstance(node, ast.Import)
                                      else [node.module or ""]))}
    assert importing == {"attacks/scoring/distributed.py"}
