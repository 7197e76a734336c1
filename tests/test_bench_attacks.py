"""bench/attack_bench.py end to end on a tiny artifact (no Foolbox needed), and the Foolbox ledger's budget rule."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from model_fixtures import make_artifact

from bench import attack_bench

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bench():
    return attack_bench


def test_bench_runs_our_attacks_within_budget_and_reports_goals(bench, fmnist_dir, tmp_path, capsys):
    art = make_artifact(tmp_path / "art")
    out = tmp_path / "bench.json"
    rc = bench.main(["--models", f"tiny={art}", "--data", str(fmnist_dir), "--images", "2", "--budget", "50",
                     "--skip-foolbox", "--methods", "boundary,hsja,suite,whitebox", "--surrogates", str(art),
                     "--whitebox-steps", "50", "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    methods = report["models"][0]["methods"]
    members = [f"top5:{name}" for name in ("transfer+cgba", "cgba", "hsja", "transfer+biased_boundary", "transfer")]
    assert set(methods) == {"boundary", "hsja", *members, "top5 (min)", "whitebox"}
    for name in ("boundary", "hsja", *members):
        assert max(methods[name]["queries"]) <= 50  # per attack and image: no attack exceeds its budget
        assert methods[name]["unverified"] == 0
        assert all(d is not None and d > 0 for d in methods[name]["distances"])  # the untrained CNN is easy to fool
    suite = methods["top5 (min)"]["distances"]
    assert suite == [min(methods[m]["distances"][i] for m in members) for i in range(2)]
    assert all(w <= d + 1e-9 for w, d in zip(methods["whitebox"]["distances"], suite))  # it refines the suite's points
    gaps = report["gaps"]["tiny"]  # where the suite is farthest from the reference
    assert gaps["ratio_quantiles"]["p10"] <= gaps["ratio_quantiles"]["p90"] and len(gaps["worst"]) == 2
    assert gaps["worst"][0]["ratio"] >= gaps["worst"][1]["ratio"] >= 1 - 1e-9
    assert sum(gaps["winners_in_worst_quarter"].values()) == 1
    # without Foolbox, the goals against it are left out
    assert set(report["figures"]) == {"tiny suite/whitebox median ratio", "tiny mean images per model call"}
    assert capsys.readouterr().out.splitlines()[-1].startswith("tiny mean images per model call: ")


def test_bench_runs_registry_attacks_on_the_64x64x3_proxy_with_surrogates_of_its_shape(bench, fmnist_dir, tmp_path):
    """Any registered attack is a method; a 64x64x3 model reads the proxy images and gets only 64x64x3 surrogates."""
    art = make_artifact(tmp_path / "art64", seed=1, shape=(64, 64, 3))  # seed 1: some images right
    surrogates = [make_artifact(tmp_path / "sur28", seed=2),
                  make_artifact(tmp_path / "sur64", seed=2, shape=(64, 64, 3))]
    out = tmp_path / "bench.json"
    rc = bench.main(["--models", f"proxy={art}", "--data", str(fmnist_dir), "--images", "2", "--budget", "40",
                     "--methods", "cgba,prior_geoda", "--surrogates", ",".join(map(str, surrogates)),
                     "--json", str(out)])
    assert rc == 0
    methods = json.loads(out.read_text())["models"][0]["methods"]
    assert set(methods) == {"cgba", "prior_geoda"}
    assert str(surrogates[1]) in methods["prior_geoda"]["settings"] and str(surrogates[0]) not in \
        methods["prior_geoda"]["settings"]
    for result in methods.values():
        assert max(result["queries"]) <= 40 and result["unverified"] == 0
        assert all(d is not None and d > 0 for d in result["distances"])


def test_bench_refuses_surrogate_attacks_without_surrogates_of_the_models_shape(bench, fmnist_dir, tmp_path, capsys):
    art = make_artifact(tmp_path / "art64", seed=1, shape=(64, 64, 3))  # seed 1: some images right
    rc = bench.main(["--models", f"proxy={art}", "--data", str(fmnist_dir), "--methods", "prior_geoda",
                     "--surrogates", str(make_artifact(tmp_path / "sur28"))])
    assert rc == 2 and "none of --surrogates takes model proxy's 64 x 64 x 3 images" in capsys.readouterr().err


def test_bench_rejects_unknown_models_and_methods(bench, fmnist_dir):
    assert bench.main(["--models", "nosuch", "--data", str(fmnist_dir)]) == 2
    assert bench.main(["--models", "natural", "--methods", "nosuch", "--data", str(fmnist_dir)]) == 2


def test_foolbox_probe_scores_only_the_first_budget_queries(bench):
    """The closest misclassified rounded query among the first ``budget`` counts; the next one stops Foolbox."""
    net = lambda x: torch.stack([x.flatten(1).mean(1), torch.full((len(x),), 0.5)], dim=1)  # noqa: E731  class 1 below 0.5
    probe = bench.FoolboxProbe(net, num_classes=2, budget=3)
    clean = np.full((2, 2, 1), 255, dtype=np.uint8)  # class 0
    probe.reset(clean, label=0)
    for value in (0.9, 0.4, 0.3):  # 0.4 and 0.3 are misclassified; 0.3 is farther from the clean image
        answer = probe(torch.full((1, 1, 2, 2), value))
        assert answer.argmax(1).item() == int(value < 0.5)
    assert probe.used == 3 and probe.best_l2 == pytest.approx(2 * (1 - 102 / 255))
    with pytest.raises(bench.BudgetSpent):
        probe(torch.full((1, 1, 2, 2), 0.45))
    assert probe.best_l2 == pytest.approx(2 * (1 - 102 / 255))
