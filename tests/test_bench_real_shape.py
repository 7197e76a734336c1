"""bench/real_shape.py and bench/gpu.py on their smoke settings print their figures and write their JSON; the fixture
writer's data sets load through the project's own readers, with classes a model can tell apart."""
from __future__ import annotations

import json

import numpy as np
import pytest

from avc_common.data.fashion_mnist import load_fashion_split
from avc_common.data.tiny_imagenet import load_tiny_imagenet
from bench import gpu, real_shape
from bench.fixtures import write_fashion_mnist, write_tiny_imagenet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def nearest_mean_accuracy(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> float:
    """Accuracy on ``test`` of the classifier that answers the class whose mean training image is nearest."""
    (x, y), (tx, ty) = train, test
    means = np.stack([x[y == c].reshape((y == c).sum(), -1).mean(axis=0) for c in np.unique(y)])
    distances = ((tx.reshape(len(tx), 1, -1).astype(float) - means[None]) ** 2).sum(axis=2)
    return float((np.unique(y)[distances.argmin(axis=1)] == ty).mean())


def test_fixtures_load_through_the_readers_and_their_classes_are_learnable(tmp_path):
    root = write_tiny_imagenet(tmp_path / "tiny", classes=5, per_class=3, val_per_class=2)
    train, val = (load_tiny_imagenet(root, split, progress=False) for split in ("train", "val"))
    assert train.images.shape == (15, 64, 64, 3) and val.images.shape == (10, 64, 64, 3)
    assert train.class_ids == (root / "wnids.txt").read_text().split() and sorted(set(val.labels)) == [0, 1, 2, 3, 4]
    assert nearest_mean_accuracy((train.images, train.labels), (val.images, val.labels)) == 1.0
    fmnist = write_fashion_mnist(tmp_path / "fmnist", per_class=4, test_per_class=2)
    (x, y), (tx, ty) = load_fashion_split(fmnist, "train"), load_fashion_split(fmnist, "test")
    assert x.shape == (40, 28, 28, 1) and y[:10].tolist() == list(range(10)) and len(tx) == 20
    assert nearest_mean_accuracy((x, y), (tx, ty)) == 1.0


def test_real_shape_fast_prints_both_ratio_lines_and_writes_the_json(tmp_path, capsys):
    out = tmp_path / "real-shape.json"
    assert real_shape.main(["--fast", "--threads", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    report = json.loads(out.read_text())
    for figure in ("real-shape", "small-cnn"):
        line = next(line for line in printed if line.startswith(f"{figure} end-to-end/in-process ratio: "))
        assert float(line.rsplit(" ", 1)[1]) == pytest.approx(report["figures"][f"{figure} end-to-end/in-process "
                                                                                 f"ratio"], abs=0.005)
    for row in report["rows"]:
        run = row["end_to_end"]
        # the server's own counters: every query the scorer's attacks spent was answered by it
        assert run["complete"] and run["queries"] >= row["scorer_summary"]["queries"]["attacks_total"] > 0
        assert run["images_per_s"] == pytest.approx(run["queries"] / run["wall_s"])
        assert row["ratio"] == pytest.approx(run["images_per_s"] / row["in_process_images_per_s"])


def test_gpu_bench_tiny_on_the_cpu_runs_every_stage_and_reports_each_figure(tmp_path, capsys):
    out = tmp_path / "gpu-bench"
    assert gpu.main(["--device", "cpu", "--tiny", "--output", str(out)]) == 0
    report = json.loads((out / "gpu-bench.json").read_text())
    assert {name: stage["status"] for name, stage in report["stages"].items()} == {
        "train-step": "ok", "train-step-compile": "skipped", "train": "ok", "score": "ok"}  # compile: CUDA only
    figures = report["figures"]
    for name in ("train-step speed-up ratio", "train-step ours+bf16+channels_last/reference ratio",
                 "train images/s", "score end-to-end images/s", "score projected 500 images minutes"):
        assert figures[name] > 0, name
    assert figures["score trained"] == 1  # the server served the artifact the train stage exported
    printed = capsys.readouterr().out
    assert all(f"\n{name}: " in printed for name in figures)
    assert (out / "gpu-bench.log").read_text() == printed  # the printed log comes back with the JSON


def test_gpu_bench_names_the_wheel_a_stage_misses_and_still_reports(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(gpu.WHEELS, "no_such_module", "no-such-wheel")
    monkeypatch.setitem(gpu.NEEDS, "score", ("no_such_module",))
    assert gpu.main(["--device", "cpu", "--tiny", "--stages", "score", "--output", str(tmp_path)]) == 1
    printed = capsys.readouterr().out
    assert "carry these wheels" in printed and "no-such-wheel" in printed
    stage = json.loads((tmp_path / "gpu-bench.json").read_text())["stages"]["score"]
    assert stage["status"] == "missing" and "carry the wheel no-such-wheel" in stage["error"]


@pytest.mark.parametrize("script, argv", [(real_shape, ["--rows", "resnet18,nope"]),
                                          (gpu, ["--device", "cpu", "--stages", "nope"])])
def test_unknown_rows_or_stages_exit_2_naming_the_flag(script, argv, capsys):
    with pytest.raises(SystemExit) as stop:
        script.main(argv)
    assert stop.value.code == 2 and f"{argv[-2]}: unknown nope" in capsys.readouterr().err
