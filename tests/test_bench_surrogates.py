"""bench/surrogates.py end to end on tiny artifacts, and its infinite-ensemble ceiling."""
from __future__ import annotations

import json
import math

import pytest
from model_fixtures import make_artifact

from bench import surrogates

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bench():
    return surrogates


def test_ceiling_inverts_the_shared_plus_own_noise_model(bench):
    """Shared share s2 = 0.5: two 4-model ensembles agree at 0.5 / (0.5 + 0.5 / 4) = 0.8; infinitely many surrogates
    would agree with the target at sqrt(0.5)."""
    assert bench.ceiling(0.8, 4) == pytest.approx(math.sqrt(0.5))
    assert bench.ceiling(1.0, 3) == pytest.approx(1.0)
    assert bench.ceiling(-0.2, 4) == 0.0


def test_bench_measures_lines_and_agreement_within_budget(bench, fmnist_dir, tmp_path, capsys):
    target = make_artifact(tmp_path / "target", training={"loss": "natural"}, seed=0)
    surrogates = [make_artifact(tmp_path / f"s{i}", training={"loss": "natural"}, seed=i) for i in (1, 2)]
    out = tmp_path / "bench.json"
    rc = bench.main(["--model", str(target), "--surrogates", ",".join(map(str, surrogates)), "--sizes", "1,2",
                     "--data", str(fmnist_dir), "--images", "2", "--budget", "40", "--fmn-steps", "20",
                     "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert set(report["lines"]) == {"1", "2"}
    for run in [*report["lines"].values(), report["refined"]]:
        assert run["max_queries"] <= 40 and run["median"] > 0
    assert all(-1 <= c <= 1 for c in [*report["agreement"].values(), *report["single_agreement"]])
    assert capsys.readouterr().out.splitlines()[-1].startswith("agreement ceiling (infinite ensemble): ")


def test_bench_rejects_sizes_beyond_the_surrogates(bench, fmnist_dir, tmp_path):
    target = make_artifact(tmp_path / "target")
    assert bench.main(["--model", str(target), "--surrogates", f"{target},{target}", "--sizes", "3",
                       "--data", str(fmnist_dir)]) == 2
