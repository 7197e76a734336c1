"""The training CLI end to end on a small Fashion-MNIST-format fixture: resume, DDP, export, evaluation."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from avc_common.artifact import load_artifact
from training import evaluate, train_tiny
from training.checkpoint import load_checkpoint

ROOT = Path(__file__).parents[1]


def common_args(data: Path, out: Path, epochs: int = 2) -> list[str]:
    return ["--dataset", "fashion_mnist", "--data", str(data), "--arch", "small_cnn",
            "--epsilon", "0.1", "--step-size", "0.03", "--steps", "2", "--lr", "0.05",
            "--batch-size", "32", "--epochs", str(epochs), "--eval-images", "64",
            "--final-eval-images", "64", "--output", str(out), "--no-progress"]


def test_train_exports_artifact_with_metrics(fmnist_dir, tmp_path, capsys):
    assert train_tiny.main(common_args(fmnist_dir, tmp_path) + ["--lr-schedule", "onecycle"]) == 0
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    artifact = load_artifact(tmp_path / "artifact")
    m = artifact.manifest
    assert m["input"] == {"height": 28, "width": 28, "channels": 1} and m["num_classes"] == 10
    assert m["training"]["loss"] == "trades" and m["training"]["beta"] == 6.0
    assert 0.0 <= m["metrics"]["pgd_accuracy"] <= m["metrics"]["clean_accuracy"] <= 1.0
    assert "clean accuracy" in capsys.readouterr().out


def test_export_then_load_gives_same_logits(fmnist_dir, tmp_path):
    train_tiny.main(common_args(fmnist_dir, tmp_path, epochs=1))
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    net, _ = evaluate.load_model(tmp_path / "checkpoint.pt", torch.device("cpu"))
    net.eval()
    artifact = load_artifact(tmp_path / "artifact")
    for batch in (1, 7, 64):  # the batch dimension is dynamic
        x = torch.rand(batch, 1, 28, 28)
        with torch.no_grad():
            assert torch.allclose(artifact.model(x), net(x), atol=1e-5)
    assert ckpt["epoch"] == 1


def test_kill_and_resume_ends_with_same_weights(fmnist_dir, tmp_path):
    # the same thread count in this process and the killed subprocess: float sums depend on it
    args = common_args(fmnist_dir, tmp_path / "straight", epochs=3) + ["--threads", "1"]
    args[args.index("--batch-size") + 1] = "16"
    assert train_tiny.main(args + ["--no-export"]) == 0

    killed = tmp_path / "killed"
    args[args.index("--output") + 1] = str(killed)
    proc = subprocess.Popen([sys.executable, str(ROOT / "training" / "train_tiny.py"), *args, "--no-export"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / "metrics.jsonl").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(killed / "checkpoint.pt")["epoch"] < 3, "killed too late to test resume"
    assert train_tiny.main(args + ["--no-export", "--resume"]) == 0

    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(killed / "checkpoint.pt")
    assert b["epoch"] == 3
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]


def test_resume_refuses_changed_hyperparameters(fmnist_dir, tmp_path, capsys):
    args = common_args(fmnist_dir, tmp_path, epochs=1) + ["--no-export", "--final-eval-images", "-1"]
    assert train_tiny.main(args) == 0
    assert train_tiny.main(args + ["--resume", "--beta", "1.0"]) == 2
    assert "--beta (6.0 there, 1.0 now)" in capsys.readouterr().err


def test_two_process_ddp_training_runs(fmnist_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "training" / "train_tiny.py"), *common_args(fmnist_dir, tmp_path, epochs=1)],
        capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    history = load_checkpoint(tmp_path / "checkpoint.pt")["history"]
    # each of the 2 processes trained on its own half of the 512 images
    assert history[0]["train_images_per_s"] * history[0]["train_seconds"] == pytest.approx(256, abs=1)
    assert load_artifact(tmp_path / "artifact").manifest["training"]["world_size"] == 2


def test_bad_data_folder_fails_clearly(tmp_path, capsys):
    code = train_tiny.main(["--dataset", "fashion_mnist", "--data", str(tmp_path), "--output",
                            str(tmp_path / "out"), "--arch", "small_cnn"])
    assert code == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte" in err and "dataset-fashion-mnist" in err


def test_help_documents_every_flag_with_default(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    with pytest.raises(SystemExit) as exit_info:
        train_tiny.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--epsilon", "--beta", "--resume", "--augment", "--precision", "--compile"):
        assert flag in text
    assert "(default: 0.031)" in text and "(default: 6.0)" in text
    assert "(default: auto = 1000; 100 for a ResNet on a CPU" in text  # --eval-images
    assert "(default: auto = 0; 1000 for a ResNet on a CPU" in text  # --final-eval-images


def test_evaluate_reports_ce_cw_and_worst_case(fmnist_dir, tmp_path, capsys):
    train_tiny.main(common_args(fmnist_dir, tmp_path, epochs=1))
    out = tmp_path / "eval.json"
    code = evaluate.main(["--model", str(tmp_path / "artifact"), "--data", str(fmnist_dir),
                          "--steps", "5", "--json", str(out), "--no-progress"])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["images"] == 128 and result["attack"]["epsilon"] == 0.1
    assert result["pgd_accuracy"] <= min(result["pgd_accuracy_ce"], result["pgd_accuracy_cw"])
    assert result["pgd_accuracy_ce"] <= result["clean_accuracy"]
    assert "worst case accuracy" in capsys.readouterr().out


def test_recipe_sets_defaults_and_explicit_flags_win():
    from training.train_tiny import RECIPES, parse_args
    args = parse_args(["--recipe", "fmnist-cpu", "--epochs", "3", "--lr", "0.01"])
    assert (args.dataset, args.arch, args.epsilon) == ("fashion_mnist", "small_cnn", 0.1)
    assert (args.epochs, args.lr) == (3, 0.01)
    assert parse_args([]).dataset == "tiny_imagenet" and "fmnist-cpu" in RECIPES


@pytest.mark.parametrize("arch, device, sizes", [
    ("resnet18", "cpu", (100, 1000)),   # PGD-20 takes seconds per image there: minutes per epoch
    ("small_cnn", "cpu", (1000, 0)),    # 1000 per epoch, the whole test set at the end
    ("resnet18", "cuda", (1000, 0)),    # a GPU: the full sizes (no GPU needed to resolve them)
])
def test_auto_evaluation_sizes_follow_model_and_device(arch, device, sizes):
    assert train_tiny.auto_eval_images(arch, torch.device(device)) == sizes


def test_auto_evaluation_is_announced_once_and_explicit_sizes_are_kept(capsys):
    argv = ["--arch", "resnet18", "--device", "cpu"]
    args = train_tiny._with_eval_sizes(train_tiny.parse_args(argv), announce=True)
    assert (args.eval_images, args.final_eval_images) == (100, 1000)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "resnet18 on cpu (auto): --eval-images 100 --final-eval-images 1000;" in err

    args = train_tiny._with_eval_sizes(train_tiny.parse_args(argv + ["--eval-images", "7"]), announce=True)
    assert (args.eval_images, args.final_eval_images) == (7, 1000)
    assert "--eval-images" not in capsys.readouterr().err

    args = train_tiny.parse_args(argv + ["--eval-images", "0", "--final-eval-images", "-1"])
    args = train_tiny._with_eval_sizes(args, announce=True)
    assert (args.eval_images, args.final_eval_images) == (0, -1) and capsys.readouterr().err == ""


def test_run_with_auto_evaluation_records_its_size_and_resumes(fmnist_dir, tmp_path, capsys):
    args = common_args(fmnist_dir, tmp_path, epochs=1)
    for flag in ("--eval-images", "--final-eval-images"):  # both left at auto
        del args[args.index(flag):args.index(flag) + 2]
    args += ["--train-images", "64", "--steps", "1", "--eval-steps", "2", "--device", "cpu", "--no-export"]
    assert train_tiny.main(args) == 0
    assert "small_cnn on cpu (auto): --eval-images 1000 --final-eval-images 0 (all);" in capsys.readouterr().err
    assert train_tiny.main(args + ["--epochs", "2", "--resume"]) == 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["eval_images"]) for r in records] == [(1, 128), (2, 128)]  # the fixture's whole test set
    assert json.loads((tmp_path / "summary.json").read_text())["final"]["eval_images"] == 128


@pytest.mark.parametrize("native", [False, True])
def test_precision_auto_and_the_cpu_recipe_use_bf16_only_where_the_device_computes_it(native, monkeypatch, capsys):
    """Emulated bf16 made the recipe's TRADES epoch about 12x slower on an AVX2-only CPU (docs/training.md)."""
    monkeypatch.setattr(train_tiny, "native_bf16", lambda device: native)
    args = train_tiny.parse_args(["--recipe", "fmnist-cpu", "--device", "cpu"])
    assert args.precision == "auto" and train_tiny._runtime(args).bf16 is native
    args.precision = "bf16"  # asked for outright: honoured, with a warning where it is emulated
    assert train_tiny._runtime(args).bf16
    assert ("no native bf16" in capsys.readouterr().err) is not native
