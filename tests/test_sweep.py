"""The 1/lambda sweep on tiny settings: the table has every field, finished runs are reused, killed ones resume."""
from __future__ import annotations

import json

import pytest

from training import sweep

ROWS = {"beta", "inv_lambda", "clean_accuracy", "pgd_accuracy", "eval_images", "eval_attack", "epochs",
        "train_seconds", "wall_seconds", "reused", "output_dir"}


def tiny(fmnist_dir, out, *extra: str) -> list[str]:
    return ["--betas", "1", "3", "--epochs", "1", "--train-images", "128", "--eval-images", "32",
            "--data", str(fmnist_dir), "--output", str(out), "--steps", "1", "--batch-size", "64",
            "--eval-steps", "2", "--no-progress", "--threads", "1", *extra]


def test_sweep_writes_the_table_and_reuses_finished_runs(fmnist_dir, tmp_path, capsys, one_torch_thread):
    out = tmp_path / "sweep"
    assert sweep.main(tiny(fmnist_dir, out)) == 0
    result = json.loads((out / "tradeoff.json").read_text())
    assert [r["beta"] for r in result["rows"]] == [1.0, 3.0]
    for r in result["rows"]:
        assert set(r) == ROWS and not r["reused"] and r["eval_images"] == 32 and r["epochs"] == 1
        assert 0 <= r["pgd_accuracy"] <= r["clean_accuracy"] <= 1 and r["wall_seconds"] > 0
    assert set(result["trend"]) == {"clean_falls_monotonically", "robust_rises_monotonically",
                                    "clean_change", "robust_change"}
    assert "| 1/lambda (beta) | clean acc | PGD-20 acc | wall time |" in (out / "tradeoff.md").read_text()
    assert (out / "tradeoff.png").read_bytes()[:4] == b"\x89PNG"
    checkpoint = out / "beta-3" / "checkpoint.pt"
    trained = checkpoint.stat().st_mtime_ns
    capsys.readouterr()

    assert sweep.main(tiny(fmnist_dir, out)) == 0
    assert capsys.readouterr().out.count("reusing") == 2 and checkpoint.stat().st_mtime_ns == trained
    again = json.loads((out / "tradeoff.json").read_text())["rows"]
    assert [dict(r, reused=False) for r in again] == result["rows"] and all(r["reused"] for r in again)


def test_an_interrupted_run_resumes_from_its_checkpoint(fmnist_dir, tmp_path, capsys, one_torch_thread):
    out = tmp_path / "sweep"
    assert sweep.main(tiny(fmnist_dir, out)) == 0
    metrics = (out / "beta-1" / "metrics.jsonl").read_text()
    for name in ("sweep-run.json", "summary.json"):  # as if killed after its last checkpoint
        (out / "beta-1" / name).unlink()
    capsys.readouterr()
    assert sweep.main(tiny(fmnist_dir, out)) == 0
    captured = capsys.readouterr()
    assert "resumed" in captured.err and captured.out.count("reusing") == 1
    assert (out / "beta-1" / "metrics.jsonl").read_text() == metrics  # no epoch trained again
    assert (out / "beta-1" / "summary.json").is_file()


def test_a_changed_training_flag_is_refused_not_mixed_in(fmnist_dir, tmp_path, capsys, one_torch_thread):
    out = tmp_path / "sweep"
    assert sweep.main(tiny(fmnist_dir, out)) == 0
    assert sweep.main(tiny(fmnist_dir, out, "--lr", "0.01")) == 2
    assert "different --lr" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [["--beta", "2"], ["--loss", "natural"], ["--no-such-flag"], ["--betas", "1", "1"]])
def test_bad_flags_exit_2_before_training(bad, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(["--output", str(tmp_path / "sweep"), *bad])
    assert exit_info.value.code == 2
    assert not (tmp_path / "sweep").exists()
