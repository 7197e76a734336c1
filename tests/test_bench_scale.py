"""bench/scale.py end to end on its smoke size: every scenario scores the job, two replicas share the calls, and it
prints both speed-up lines and the projection's figures."""
from __future__ import annotations

import json
import re

import pytest

from bench import scale as bench

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_scale_bench_runs_every_scenario_and_prints_the_speed_ups(tmp_path, capsys):
    pytest.importorskip("ray")
    out = tmp_path / "scale.json"
    assert bench.main(["--fast", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    runs = report["runs"]
    assert list(runs) == ["single", "ray-2", "ray-2, 2 replicas"]
    assert all(run["images_per_s"] > 0 and run["queries"] > 0 for run in runs.values())
    assert runs["ray-2"]["workers"] == 2 and runs["single"]["workers"] is None
    assert len(runs["ray-2, 2 replicas"]["server_images"]) == 2 and min(runs["ray-2, 2 replicas"]["server_images"]) > 0
    assert set(report["projection"]["hours"]) == {f"{n}x{m}" for n in bench.REPLICAS for m in bench.WORKERS}
    # a difference of two measured times (bench/scale.py shape_costs): never negative, zero on a busy core
    assert report["costs"]["client_cpu_s_per_query"] > 0 and report["costs"]["server_overhead_s_per_image"] >= 0
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"ray 2-worker speed-up: \d+\.\d\d", lines[-2])
    assert re.fullmatch(r"2-replica speed-up: \d+\.\d\d", lines[-1])
