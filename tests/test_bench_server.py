"""bench/server.py end to end on tiny settings: the server's own figures come from its metrics and match the load."""
from __future__ import annotations

import json
import re

import pytest

from bench import server as bench

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_bench_reads_the_servers_counters_for_each_scenario(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = bench.main(["--models", "smallcnn", "--duration-s", "0.3", "--warmup-s", "0", "--clients", "1,2",
                     "--batch-images", "4", "--max-batch-size", "8", "--threads", "1", "--latency-rounds", "1",
                     "--no-echo", "--json", str(out)])
    assert rc == 0  # labels match the in-process model, no call failed
    report = json.loads(out.read_text())
    scenarios = {s["name"]: s for s in report["results"][0]["scenarios"]}
    assert set(scenarios) == {"1-client", "2-clients", "batch4-client"}
    # No warm-up and one call in flight per client: the server counted exactly the scenario's own calls.
    one, batching = scenarios["1-client"], scenarios["batch4-client"]
    assert one["calls"] > 0 and one["server_batches"] == one["calls"] and one["server_mean_batch"] == 1
    assert 0 < one["server_model_ms"] < one["server_answer_ms"] < one["mean_ms"]
    assert batching["server_batches"] == batching["calls"] and batching["server_mean_batch"] == 4
    assert 0 < scenarios["2-clients"]["server_batches"] <= scenarios["2-clients"]["calls"]
    captured = capsys.readouterr()
    assert re.search(r"counters from http://127\.0\.0\.1:\d+/metrics", captured.err)  # scraped, not a log or file
    lines = captured.out.splitlines()
    assert any(line.startswith("smallcnn 2-clients/in-process ratio: ") for line in lines)
    assert lines[-1].startswith("smallcnn batch1 added over in-process ms: ")
