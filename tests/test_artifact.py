"""The model artifact contract: what is saved loads back identically, and tampering is refused."""
from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
import torch

from attacks.scoring import cli as score_cli
from avc_common import __version__
from avc_common.artifact import ArtifactError, load_artifact, save_artifact
from avc_common.data.evalset import write_folder
from training.models import create_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    net = create_model("small_cnn", 10, 1, [0.3], [0.4]).eval()
    out = save_artifact(net, tmp_path_factory.mktemp("art") / "artifact", input_shape=(28, 28, 1),
                        class_names=[f"c{i}" for i in range(10)], arch="small_cnn",
                        dataset="fashion_mnist", training={"loss": "trades"},
                        metrics={"clean_accuracy": 0.5})
    return net, out


def test_roundtrip_same_logits_and_manifest(saved):
    net, out = saved
    artifact = load_artifact(out)
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(artifact.model(x), net(x), atol=1e-6)
    assert artifact.input_shape == (28, 28, 1) and artifact.num_classes == 10
    assert artifact.manifest["sha256"]["model.pt2"] and artifact.manifest["trades_avc_version"] == __version__
    assert artifact.model.eval() is artifact.model  # frozen eval mode, eval() is harmless


def _copy(out, tmp_path):
    dst = tmp_path / "copy"
    dst.mkdir()
    for f in out.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_corrupted_model_file_is_refused(saved, tmp_path):
    dst = _copy(saved[1], tmp_path)
    data = bytearray((dst / "model.pt2").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (dst / "model.pt2").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"sha256 .* does not match"):
        load_artifact(dst)


def _edit_manifest(dst, edit):
    manifest = json.loads((dst / "manifest.json").read_text())
    edit(manifest)
    (dst / "manifest.json").write_text(json.dumps(manifest))


def _replace_model(dst, data: bytes, edit=lambda m: None):
    """A new model.pt2 whose hash the manifest is updated to: only the file's content can be wrong."""
    (dst / "model.pt2").write_bytes(data)
    _edit_manifest(dst, lambda m: (m["sha256"].update({"model.pt2": hashlib.sha256(data).hexdigest()}), edit(m)))


def _seven_classes(m):
    m.update(num_classes=7, class_names=m["class_names"][:7])


@pytest.mark.parametrize("edit,message", [
    (lambda m: m.pop("num_classes"), "missing field.*num_classes"),
    (lambda m: m.update(format=2), r"format holds 2 \(int\); expected 1"),
    (lambda m: m["sha256"].update({"extra.bin": "0" * 64}), "extra.bin: listed in the manifest but missing"),
    (lambda m: m["input"].pop("height"), "input.height is missing; expected height, width and channels"),
    (lambda m: m["input"].update(height="28"), r"input\.height holds '28' \(str\); expected a positive integer"),
    (lambda m: m["input"].update(channels=True), r"input\.channels holds True \(bool\); expected a positive"),
    (lambda m: m["input"].update(width=0), r"input\.width holds 0 \(int\); expected a positive integer"),
    (lambda m: m.update(input=[28, 28, 1]), r"input holds \[28, 28, 1\] \(list\); expected a mapping"),
    (lambda m: m.update(num_classes="10"), r"num_classes holds '10' \(str\); expected a positive integer"),
    (lambda m: m.update(num_classes=7), "class_names holds 10 name.s. but num_classes is 7; expected one name per"),
    (lambda m: m.update(class_names=list(range(10))), r"class_names holds \[0, .*expected a list of strings"),
    (lambda m: m["sha256"].update({"model.pt2": "ABC"}), r"sha256\.model\.pt2 holds 'ABC' \(str\); expected 64"),
    (lambda m: m.update(arch=""), r"arch holds '' \(str\); expected a non-empty string"),
    (lambda m: m.update(training=[]), r"training holds \[\] \(list\); expected a JSON object"),
    (lambda m: m.update(created="yesterday"), "created holds 'yesterday' .str.; expected an ISO 8601 time"),
    (lambda m: m.update(torch_version=2), r"torch_version holds 2 \(int\); expected a version string"),
])
def test_bad_manifest_is_refused(saved, tmp_path, edit, message):
    dst = _copy(saved[1], tmp_path)
    _edit_manifest(dst, edit)
    with pytest.raises(ArtifactError, match=message):
        load_artifact(dst)


def test_every_wrong_field_is_named_at_once(saved, tmp_path):
    dst = _copy(saved[1], tmp_path)
    _edit_manifest(dst, lambda m: (m["input"].update(height="28"), m.update(num_classes="10")))
    with pytest.raises(ArtifactError, match=r"input\.height holds '28'.*; num_classes holds '10'"):
        load_artifact(dst)


def test_manifest_cannot_vouch_for_files_outside_the_folder(saved, tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"not the artifact's")
    dst = _copy(saved[1], tmp_path)
    digest = hashlib.sha256(outside.read_bytes()).hexdigest()
    _edit_manifest(dst, lambda m: m["sha256"].update({"../outside.bin": digest}))
    with pytest.raises(ArtifactError, match=r"sha256 names '\.\./outside\.bin'; expected files inside the artifact"):
        load_artifact(dst)


def _state_dict_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(3)}, buffer)
    return buffer.getvalue()


def _flipped(data: bytes) -> bytes:
    data = bytearray(data)
    data[len(data) // 2] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize("content,message", [
    (lambda good: good[:1000], "model.pt2: not a torch.export archive .not a whole zip file: truncated"),
    (lambda good: b"\x00" * 4096, "model.pt2: not a torch.export archive"),
    (lambda good: _state_dict_bytes(), "model.pt2: a zip file but not a torch.export archive"),
    (_flipped, r"model.pt2: its entry .* is damaged \(CRC mismatch\)"),
])
def test_unloadable_model_file_is_an_artifact_error(saved, tmp_path, capfd, content, message):
    """A model.pt2 the manifest's hash vouches for but that is no whole torch.export archive: one sentence, no
    BadZipFile or RuntimeError, and no traceback logged by torch either."""
    dst = _copy(saved[1], tmp_path)
    _replace_model(dst, content((dst / "model.pt2").read_bytes()))
    with pytest.raises(ArtifactError, match=message):
        load_artifact(dst)
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("edit,message", [
    (_seven_classes, r"model.pt2: returns \(1, 10\) for float 1 x 1 x 28 x 28 .*expected logits \(1, 7\)"),
    (lambda m: m["input"].update(channels=3), "model.pt2: does not take float 1 x 3 x 28 x 28 .the manifest's input."),
])
def test_model_that_disagrees_with_its_manifest_is_refused(saved, tmp_path, edit, message):
    dst = _copy(saved[1], tmp_path)
    _edit_manifest(dst, edit)
    with pytest.raises(ArtifactError, match=message):
        load_artifact(dst)


@pytest.fixture
def bad_artifact(saved, tmp_path):
    dst = _copy(saved[1], tmp_path)
    _replace_model(dst, (dst / "model.pt2").read_bytes()[:1000])
    return dst


@pytest.mark.parametrize("flag", ["--model", "--surrogate"])
def test_score_exits_2_naming_the_flag_for_an_unloadable_artifact(saved, bad_artifact, tmp_path, capsys, flag):
    data = write_folder(tmp_path / "data", np.zeros((2, 28, 28, 1), dtype=np.uint8), [0, 1])
    model = [] if flag == "--model" else ["--model", str(saved[1])]
    argv = [*model, flag, str(bad_artifact), "--data", str(data), "--output", str(tmp_path / "out"),
            "--attacks", "contrast", "--no-progress"]
    assert score_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag} {bad_artifact}: ") and "not a torch.export archive" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_missing_or_unreadable_manifest_is_refused(saved, tmp_path):
    with pytest.raises(ArtifactError, match="not a model artifact"):
        load_artifact(tmp_path)
    dst = _copy(saved[1], tmp_path)
    (dst / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="invalid JSON"):
        load_artifact(dst)


def test_artifact_files_are_readable_by_others(saved):
    """A container's non-root user must be able to read an artifact written by root."""
    for f in saved[1].iterdir():
        assert f.stat().st_mode & 0o044 == 0o044, f
