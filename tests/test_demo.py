"""The demo pipeline end to end on tiny settings: every stage runs as the user would run it
(train_tiny.py, python -m defense serve, attacks/score.py) and the report has every field."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--quick", "--epochs", "1", "--train-images", "256", "--eval-images", "16", "--images", "4", "--budget", "30"]


def run_demo(fmnist_dir: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "demo/run.py", "--data", str(fmnist_dir), "--output", str(out), *TINY,
                           *extra], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_quick_demo_writes_every_field_and_reuses_its_stages(fmnist_dir, tmp_path):
    out = tmp_path / "demo"
    first = run_demo(fmnist_dir, out)
    assert first.returncode == 0, first.stdout + first.stderr
    result = json.loads((out / "results.json").read_text())
    assert set(result["models"]) == {"natural", "trades"}
    for row in result["models"].values():
        assert {"clean_accuracy", "pgd_accuracy", "mean_l2", "median_l2", "attack_medians"} <= set(row)
        assert 0 <= row["clean_accuracy"] <= 1 and row["mean_l2"] >= 0 and row["attack_medians"]
    assert result["wall_s"] > 0 and "trades_over_natural_mean_l2" in result
    assert (out / "cdf.png").stat().st_size > 0 and "| natural |" in (out / "results.md").read_text()
    command = json.loads((out / "score-natural" / "results.json").read_text())["command"]
    assert all(f"--surrogate {out / s / 'artifact'}" in command for s in ("surrogate-pgd", "surrogate-natural"))
    trained = (out / "trades" / "artifact" / "model.pt2").stat().st_mtime_ns
    # each stage's key figure as it finishes, one bar over the stages, and where to look next
    assert "[train trades] done: clean accuracy" in first.stdout and "PGD-20 accuracy" in first.stdout
    assert "[score natural] done: mean minimal L2" in first.stdout
    assert "[6/6] score trades" in first.stderr and "left" in first.stderr
    assert "next:" in first.stdout and f"--model {out / 'trades' / 'artifact'}" in first.stdout

    again = run_demo(fmnist_dir, out)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "reusing" in again.stdout and (out / "trades" / "artifact" / "model.pt2").stat().st_mtime_ns == trained
    assert json.loads((out / "results.json").read_text())["models"] == result["models"]


def test_demo_refuses_a_folder_made_with_other_settings(fmnist_dir, tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "settings.json").write_text("{}\n")
    done = run_demo(fmnist_dir, out)
    assert done.returncode == 2 and "other settings" in done.stderr
