"""bench/presets.py on tiny artifacts of both shapes: candidates measured per model, surrogates matched by shape."""
from __future__ import annotations

import json

import pytest
from model_fixtures import make_artifact

from bench import presets

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_presets_measures_candidates_on_both_shapes_and_reuses_its_json(fmnist_dir, tmp_path, capsys):
    small, proxy = make_artifact(tmp_path / "m28"), make_artifact(tmp_path / "m64", seed=1, shape=(64, 64, 3))
    surrogate = make_artifact(tmp_path / "s64", seed=2, shape=(64, 64, 3))
    out = tmp_path / "presets.json"
    args = ["--models", f"small={small},proxy={proxy}", "--data", str(fmnist_dir), "--offset", "0", "--images", "2",
            "--budget", "30", "--candidates", "geoda,cgba,prior_geoda", "--surrogates", str(surrogate),
            "--json", str(out)]
    assert presets.main(args) == 0
    results = json.loads(out.read_text())
    assert set(results["small"]) == {"geoda", "cgba"}  # no 28x28x1 surrogate: prior_geoda is skipped there
    assert set(results["proxy"]) == {"geoda", "cgba", "prior_geoda"}
    for row in (*results["small"].values(), *results["proxy"].values()):
        assert row["max_queries"] <= 30 and len(row["distances"]) == 2
    text = capsys.readouterr().out
    assert "best 2: " in text  # suites ranked over the candidates both models have
    out.write_text(json.dumps({**results, "small": {**results["small"], "geoda": {**results["small"]["geoda"],
                                                                                   "median": 123.0}}}))
    assert presets.main(args) == 0  # a rerun measures nothing again
    assert json.loads(out.read_text())["small"]["geoda"]["median"] == 123.0


def test_presets_rejects_unknown_candidates_and_models_before_any_work(fmnist_dir, tmp_path, capsys):
    art = make_artifact(tmp_path / "m28")
    assert presets.main(["--models", f"m={art}", "--candidates", "nosuch", "--json", str(tmp_path / "p.json")]) == 2
    assert "unknown candidate(s) nosuch" in capsys.readouterr().err
    assert presets.main(["--models", "m=/nonexistent", "--json", str(tmp_path / "p.json")]) == 2
    assert not (tmp_path / "p.json").exists()
