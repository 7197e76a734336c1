"""The model artifact contract: what is saved loads back identically, and tampering is refused."""
from __future__ import annotations

import json

import pytest
import torch

from avc_common import __version__
from avc_common.artifact import ArtifactError, load_artifact, save_artifact
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


@pytest.mark.parametrize("edit,message", [
    (lambda m: m.pop("num_classes"), "missing field.*num_classes"),
    (lambda m: m.update(format=2), "format 2"),
    (lambda m: m["sha256"].update({"extra.bin": "00"}), "extra.bin: listed in the manifest but missing"),
    (lambda m: m["input"].pop("height"), "height, width and channels"),
])
def test_bad_manifest_is_refused(saved, tmp_path, edit, message):
    dst = _copy(saved[1], tmp_path)
    manifest = json.loads((dst / "manifest.json").read_text())
    edit(manifest)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=message):
        load_artifact(dst)


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
