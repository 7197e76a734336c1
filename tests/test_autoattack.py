"""AutoAttack in the white-box evaluation (training/autoattack.py): its bound against PGD-20, its per-attack
accuracies, the ``--attack autoattack`` JSON, ``--final-autoattack`` and the flag checks.

The behaviour checks run torchattacks' attacks with small budgets (``CHEAP``) on 16 images so that they take
seconds on a CPU; one test checks that the defaults, which the commands use, are the reference's standard version.
"""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import make_artifact

from avc_common.artifact import load_artifact
from training import autoattack, evaluate, train_tiny
from training.autoattack import COMPONENTS, AutoAttackConfig, autoattack_accuracy, build_components, metric_key
from training.engine import Runtime, evaluate_accuracy

pytest.importorskip("torchattacks", reason="the autoattack extra (part of dev)")

CHEAP = {"steps": 5, "queries": 20, "target_classes": 2}
CPU = Runtime(torch.device("cpu"))


@pytest.fixture
def cheap_autoattack(monkeypatch):
    """The commands' AutoAttack with ``CHEAP`` budgets (they build their configuration through the module)."""
    monkeypatch.setattr(autoattack, "AutoAttackConfig", functools.partial(AutoAttackConfig, **CHEAP))


@pytest.fixture(scope="module")
def model_and_images(tmp_path_factory, one_torch_thread):
    """The fixture CNN and 16 random images labelled with its own answers (clean accuracy 1), at a radius where
    PGD-20 fools some of them and not others: only then can AutoAttack do better or worse than PGD."""
    model = load_artifact(make_artifact(tmp_path_factory.mktemp("artifact"))).model
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (16, 28, 28, 1), dtype=np.uint8))
    with torch.no_grad():
        labels = model(CPU.to_input(images)).argmax(1)
    return model, images, labels, 0.008


@pytest.fixture(scope="module")
def pgd_and_autoattack(model_and_images):
    model, images, labels, eps = model_and_images
    pgd = evaluate_accuracy(model, images, labels, CPU, 16, eps, eps / 4, 20, "linf", ("ce", "cw"), progress=False)
    aa = autoattack_accuracy(model, images, labels, CPU, 8, AutoAttackConfig("linf", eps, **CHEAP), 10,
                             progress=False)
    return pgd, aa


def test_autoattack_accuracy_is_at_most_pgd20_on_the_same_images(pgd_and_autoattack):
    pgd, aa = pgd_and_autoattack
    assert 0 < pgd["pgd_accuracy"] < pgd["clean_accuracy"] == 1.0  # a radius where the comparison means something
    assert aa["autoattack_accuracy"] <= pgd["pgd_accuracy"]


def test_accuracy_after_each_attack_is_reported_in_order_and_never_rises(pgd_and_autoattack):
    pgd, aa = pgd_and_autoattack
    after = [aa[metric_key(name)] for name in COMPONENTS]
    assert list(COMPONENTS) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert pgd["clean_accuracy"] >= after[0] and after == sorted(after, reverse=True)
    assert aa["autoattack_accuracy"] == after[-1] and aa["autoattack_seconds"] > 0


def test_counted_adversarials_stay_inside_the_threat_model(model_and_images, monkeypatch):
    """An attack that overshoots the ball gets no credit for it: what is counted is projected back first."""
    model, images, labels, eps = model_and_images

    class Overshoot:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def set_device(self, device) -> None:
            pass

        def __call__(self, x, y):  # far outside the eps-ball: the point that any model misclassifies
            return torch.ones_like(x)

    import torchattacks
    for name in ("APGD", "APGDT", "FAB", "Square"):
        monkeypatch.setattr(torchattacks, name, Overshoot)
    x = CPU.to_input(images)
    with torch.no_grad():
        expected = (model(torch.minimum(x + eps, torch.ones_like(x))).argmax(1) == labels).float().mean().item()
    result = autoattack_accuracy(model, images, labels, CPU, 16, AutoAttackConfig("linf", eps, **CHEAP), 10,
                                 progress=False)
    assert result["autoattack_accuracy"] == expected


def test_default_budgets_are_the_reference_standard_version(model_and_images):
    model = model_and_images[0]
    cfg = AutoAttackConfig("l2", 0.5)
    assert cfg.standard and cfg.describe() == "AutoAttack standard l2 eps=0.5"
    attacks = dict(build_components(model, cfg, 200, torch.device("cpu")))
    assert list(attacks) == list(COMPONENTS)
    apgd, apgdt, fab, square = attacks.values()
    assert {a.norm for a in attacks.values()} == {"L2"} and {a.eps for a in attacks.values()} == {0.5}
    assert (apgd.steps, apgd.loss, apgd.n_restarts) == (100, "ce", 1)
    assert (apgdt.steps, apgdt.n_target_classes, apgdt.n_restarts) == (100, 9, 1)  # 9 of the 199 wrong classes
    assert (fab.steps, fab.n_target_classes, fab.n_restarts, fab.multi_targeted) == (100, 9, 1, True)
    assert (square.n_queries, square.p_init, square.n_restarts, square.rescale_schedule) == (5000, 0.8, 1, False)
    assert dict(build_components(model, cfg, 4, torch.device("cpu")))["apgd-t"].n_target_classes == 3


def test_evaluate_json_has_clean_pgd_autoattack_and_per_attack_fields(fmnist_dir, tmp_path, cheap_autoattack,
                                                                      one_torch_thread, capsys):
    out = tmp_path / "eval.json"
    code = evaluate.main(["--model", str(make_artifact(tmp_path / "artifact")), "--data", str(fmnist_dir),
                          "--attack", "autoattack", "--images", "16", "--epsilon", "0.05", "--steps", "5",
                          "--device", "cpu", "--json", str(out), "--no-progress"])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["images"] == 16
    assert {"clean_accuracy", "pgd_accuracy", "autoattack_accuracy", "autoattack_seconds", "seconds",
            *map(metric_key, COMPONENTS)} <= set(result)
    assert result["autoattack_accuracy"] <= result[metric_key("apgd-ce")] <= result["clean_accuracy"]
    record = result["attack"]["autoattack"]
    assert record["components"] == list(COMPONENTS) and record["version"] == "custom"
    assert (record["norm"], record["epsilon"], record["steps"]) == ("linf", 0.05, CHEAP["steps"])
    text = capsys.readouterr().out
    assert "after apgd-ce" in text and "after square" in text and "AutoAttack accuracy" in text


def test_final_autoattack_lands_beside_the_final_pgd_figures(fmnist_dir, tmp_path, cheap_autoattack,
                                                            one_torch_thread):
    assert train_tiny.parse_args([]).final_autoattack is False  # off unless asked
    args = ["--dataset", "fashion_mnist", "--data", str(fmnist_dir), "--arch", "small_cnn", "--loss", "natural",
            "--epsilon", "0.1", "--epochs", "1", "--train-images", "64", "--batch-size", "32", "--eval-images", "0",
            "--final-eval-images", "16", "--final-autoattack", "--output", str(tmp_path), "--no-progress"]
    assert train_tiny.main(args) == 0
    final = json.loads((tmp_path / "summary.json").read_text())["final"]
    metrics = load_artifact(tmp_path / "artifact").manifest["metrics"]
    keys = {"autoattack_accuracy", "autoattack_attack", "autoattack_seconds", *map(metric_key, COMPONENTS)}
    assert keys <= set(final) and keys <= set(metrics)
    assert metrics["autoattack_accuracy"] == final["autoattack_accuracy"] <= final["clean_accuracy"]
    assert metrics["autoattack_attack"].endswith("linf eps=0.1") and metrics["eval_images"] == 16


@pytest.mark.parametrize("argv,missing,message", [
    (["--attack", "autoattack", "--epsilon", "0"], False, "--epsilon: AutoAttack needs a radius > 0"),
    (["--attack", "autoattacks"], False, "argument --attack: invalid choice"),
    (["--attack", "autoattack"], True, "--attack autoattack: torchattacks is not installed here; "
                                       "pip install 'trades-avc[autoattack]'"),
])
def test_evaluate_refuses_bad_autoattack_flags_before_any_work(argv, missing, message, monkeypatch, capsys):
    if missing:
        monkeypatch.setitem(sys.modules, "torchattacks", None)  # as if the extra were not installed
    with pytest.raises(SystemExit) as stop:  # "--model m" does not exist: reaching it would be a different error
        evaluate.main(["--model", "m", *argv])
    assert stop.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--final-eval-images", "-1"], "--final-autoattack: not with --final-eval-images -1"),
    (["--epsilon", "0"], "--final-autoattack: AutoAttack needs a radius > 0"),
])
def test_train_refuses_final_autoattack_it_cannot_run_before_any_work(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        train_tiny.main(["--final-autoattack", "--output", str(tmp_path), *argv])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not list(Path(tmp_path).iterdir())


def test_evaluate_refuses_a_recorded_training_epsilon_of_zero(fmnist_dir, tmp_path, capsys):
    artifact = make_artifact(tmp_path / "artifact", training={"loss": "natural", "epsilon": 0.0})
    code = evaluate.main(["--model", str(artifact), "--data", str(fmnist_dir), "--attack", "autoattack",
                          "--no-progress"])
    assert code == 2
    assert capsys.readouterr().err == ("error: AutoAttack needs a radius > 0, got epsilon 0 (the training epsilon "
                                       "the model records; give --epsilon)\n")
