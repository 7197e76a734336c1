"""``python -m defense check``: a good submission passes; each broken one fails with its field and fix."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from submission_fixtures import ROOT, SHAPE, crisp_doc, make_artifact, random_images, write_crisp

from avc_common.artifact import load_artifact
from avc_common.data import evalset
from defense.batcher import classify
from defense.cli import main
from defense.submission.check import local_command
from defense.submission.manifest import field_problems, load


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("art") / "artifact")


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory, artifact) -> Path:
    """A competition-format folder; the labels are the model's own but two, so accuracy is 30/32."""
    images = random_images(32, seed=5)
    labels = classify(load_artifact(artifact).model, images)
    labels[:2] = (labels[:2] + 1) % 10
    return evalset.write_folder(tmp_path_factory.mktemp("eval") / "images", images, labels)


def _set(doc: dict, field: str, value) -> None:
    *sections, key = field.split(".")
    node = doc
    for section in sections:
        node = node[section]
    if value is None:
        del node[key]
    else:
        node[key] = value


def _problems(tmp_path: Path, doc: dict) -> list[tuple[str, str, str]]:
    sub, problems = load(write_crisp(tmp_path / "crisp.yaml", doc))
    assert (sub is None) == bool(problems)
    return [(p.field, p.message, p.fix) for p in problems]


def test_good_manifest_is_valid(tmp_path, artifact):
    sub, problems = load(write_crisp(tmp_path / "crisp.yaml", crisp_doc(artifact)))
    assert problems == []
    assert sub.input_shape == SHAPE and sub.num_classes == 10 and sub.memory_bytes == 4 * 2**30
    assert sub.command[:4] == ["python", "-m", "defense", "serve"] and sub.command[-2:] == ["--device", "cpu"]


BROKEN = [  # (field, value (None: delete it), problem message, fix): each alone makes one problem
    ("submission.name", None, "missing", "add it"),
    ("submission.track", "untargeted_attack", "must be robust_model", "set it"),
    ("submission.authors", [], "non-empty list", "set it"),
    ("artifact.sha256", "ab" * 32, "but .*model.pt2 has [0-9a-f]{64}", "set artifact.sha256: [0-9a-f]{64}"),
    ("artifact.sha256", 123, "64 lower-case hex digits, quoted, got 123", "sha256sum"),
    ("artifact.path", "no/such/artifact", "no/such/artifact does not exist", "run `make train-fmnist-trades` first"),
    ("container.port", 70000, "must be a TCP port 1..65535, got 70000", "container.port: 50051"),
    ("container.port", 8080, "8080 but Dockerfile serves on --port 50051 and EXPOSEs \\[50051\\]", "one port"),
    ("container.entrypoint", ["python", "serve.py"], "differs from Dockerfile's ENTRYPOINT", "container.entrypoint:"),
    ("container.dockerfile", "Nope.Dockerfile", "does not exist", "the submission's Dockerfile"),
    ("input.height", 32, "32 but the artifact has 28", "set input.height: 28"),
    ("input.num_classes", 200, "200 but the artifact has 10", "set input.num_classes: 10"),
    ("resources.memory", "lots", "a size such as 4Gi", "resources.memory: 4Gi"),
    ("resources.gpu", -1, "whole number of GPUs", "resources.gpu: 0"),
    ("resources.cpus", 2, "unknown field", "spelling"),
    ("query_budget", 1000, "must be a mapping", "key: value"),
]


@pytest.mark.parametrize("field,value,message,fix", BROKEN, ids=[f"{f}={v!r}"[:40] for f, v, *_ in BROKEN])
def test_each_broken_manifest_fails_with_its_field_and_fix(tmp_path, artifact, field, value, message, fix):
    doc = crisp_doc(artifact)
    _set(doc, field, value)
    problems = _problems(tmp_path, doc)
    assert len(problems) == 1, problems
    got_field, got_message, got_fix = problems[0]
    assert got_field == field.split(".")[0] if message == "must be a mapping" else got_field == field
    assert re.search(message, got_message) and re.search(fix, got_fix), problems[0]


def test_every_problem_is_reported_at_once(tmp_path, artifact):
    doc = crisp_doc(artifact)
    for field, value in (("submission.name", None), ("artifact.sha256", "00" * 32), ("input.width", 27),
                         ("container.port", "fifty"), ("version", 2)):
        _set(doc, field, value)
    fields = [field for field, _, _ in _problems(tmp_path, doc)]
    assert sorted(fields) == sorted(["version", "submission.name", "artifact.sha256", "input.width", "container.port"])


def test_a_tampered_artifact_is_refused(tmp_path, artifact):
    copied = tmp_path / "artifact"
    copied.mkdir()
    for f in artifact.iterdir():
        (copied / f.name).write_bytes(f.read_bytes())
    (copied / "model.pt2").write_bytes(b"tampered")
    doc = crisp_doc(artifact) | {"artifact": {"path": str(copied), "sha256": "0" * 64}}
    [(field, message, _)] = _problems(tmp_path, doc)
    assert field == "artifact.path" and "does not match the manifest" in message


def test_not_yaml_and_not_a_mapping(tmp_path):
    (tmp_path / "crisp.yaml").write_text("version: [1\n")
    assert "not valid YAML" in load(tmp_path / "crisp.yaml")[1][0].message
    (tmp_path / "crisp.yaml").write_text("- just a list\n")
    assert "must be a YAML mapping" in load(tmp_path / "crisp.yaml")[1][0].message


def test_images_folder_problems(tmp_path, images_dir):
    assert evalset.folder_problems(images_dir, SHAPE, 10) == []
    broken = tmp_path / "images"
    broken.mkdir()
    for f in images_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    labels = yaml.safe_load((broken / "labels.yml").read_text())
    labels |= {"gone.npy": 1, "00001.npy": 10}
    (broken / "labels.yml").write_text(yaml.safe_dump(labels))
    np.save(broken / "00002.npy", np.zeros((28, 28), np.uint8))
    messages = [p.message for p in evalset.folder_problems(broken, SHAPE, 10)]
    assert len(messages) == 3, messages
    assert "names 1 file(s) not in" in messages[0] and "gone.npy" in messages[0]
    assert "not an integer in 0..9: 00001.npy: 10" in messages[1]
    assert "00002.npy (uint8 (28, 28))" in messages[2]
    assert "missing" in evalset.folder_problems(tmp_path, SHAPE, 10)[0].message


def test_local_command_is_the_containers_with_local_paths(artifact):
    command = ["python", "-m", "defense", "serve", "--model", "/opt/defense/model", "--host", "0.0.0.0",
               "--port", "50051", "--device", "cpu"]
    assert local_command(command, artifact, 1234) == [
        sys.executable, "-m", "defense", "serve", "--model", str(artifact), "--host", "127.0.0.1",
        "--port", "1234", "--device", "cpu"]
    assert local_command(["python3", "-m", "defense", "serve", "--model=/m"], artifact, 9)[4:] == [
        f"--model={artifact}", "--host", "127.0.0.1", "--port", "9"]


def test_check_passes_a_good_submission(tmp_path, artifact, images_dir, capsys):
    crisp = write_crisp(tmp_path / "crisp.yaml", crisp_doc(artifact))
    code = main(["check", str(crisp), "--data", str(images_dir), "--json", str(tmp_path / "report.json"),
                 "--throughput-images", "256"])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] and report["exit_code"] == 0 and report["problems"] == []
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert statuses == {"manifest": "PASS", "server": "PASS", "model info": "PASS", "labels": "PASS",
                        "deterministic": "PASS", "malformed requests": "PASS", "accuracy": "INFO",
                        "throughput": "INFO", "memory": "PASS", "shutdown": "PASS"}
    assert report["metrics"]["clean_accuracy"] == 30 / 32 and report["metrics"]["throughput_images_per_s"] > 0
    assert "clean accuracy 93.75% (30/32)" in out and out.startswith(f"defense check {crisp}: PASS")
    assert len(out.splitlines()) <= 24  # one screen


def test_check_fails_a_failed_check_with_exit_1(tmp_path, artifact):
    doc = crisp_doc(artifact)
    doc["resources"]["memory"] = "16Mi"  # valid, but far below what torch needs
    crisp = write_crisp(tmp_path / "crisp.yaml", doc)
    run = subprocess.run([sys.executable, "-m", "defense", "check", str(crisp), "--throughput-images", "0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    assert ": FAIL\n" in run.stdout and "PASS  labels" in run.stdout
    assert "FAIL  memory" in run.stdout and "exceeds resources.memory 16Mi" in run.stdout


@pytest.mark.parametrize("broken", ["missing artifact", "labels.yml names a missing file"])
def test_check_refuses_an_invalid_submission_with_exit_2(tmp_path, artifact, images_dir, broken):
    doc, images = crisp_doc(artifact), images_dir
    if broken == "missing artifact":
        doc["artifact"]["path"] = "runs/nothing-here/artifact"
    else:
        images = tmp_path / "images"
        images.mkdir()
        (images / "labels.yml").write_text("absent.npy: 3\n")
    crisp = write_crisp(tmp_path / "crisp.yaml", doc)
    run = subprocess.run([sys.executable, "-m", "defense", "check", str(crisp), "--data", str(images)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "FAIL (invalid submission)" in run.stdout and "nothing was started" in run.stdout
    expected = "run `make train-fmnist-trades` first" if broken == "missing artifact" else "names 1 file(s) not in"
    assert expected in run.stdout


def test_committed_crisp_yaml_is_well_formed():
    """The repository's own manifest: every field valid (the artifact itself comes from `make train-fmnist-trades`)."""
    doc = yaml.safe_load((ROOT / "crisp.yaml").read_text())
    assert field_problems(doc) == []
    assert doc["artifact"]["path"] == "runs/fmnist-trades/artifact"
    _, problems = load(ROOT / "crisp.yaml")
    assert all((p.field == "artifact.path" and "make train-fmnist-trades" in p.fix) or p.field == "artifact.sha256"
               for p in problems), problems


def test_a_field_given_twice_is_refused_not_silently_overwritten(tmp_path):
    (tmp_path / "crisp.yaml").write_text("model:\n  artifact: a\n  artifact: b\n")
    submission, problems = load(tmp_path / "crisp.yaml")
    assert submission is None
    assert "duplicate key 'artifact'" in problems[0].message
