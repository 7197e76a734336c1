"""The model artifact (docs/artifact.md): the one place that saves and loads it.

An artifact is a folder with ``model.pt2`` (a ``torch.export`` program taking float
N x C x H x W in [0, 1] with a dynamic batch dimension, normalisation inside) and
``manifest.json`` (shape, classes, provenance, metrics, sha256 of every file).
Loading verifies the hashes, so a truncated or tampered file is refused.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from avc_common import __version__
from avc_common.atomic import atomic_open, atomic_write_text
from avc_common.images import ImageShape, ModelSpec

FORMAT = 1
MODEL_FILE = "model.pt2"
MANIFEST_FILE = "manifest.json"
REQUIRED_FIELDS = ("format", "input", "num_classes", "class_names", "arch", "dataset",
                   "training", "metrics", "sha256", "created")


class ArtifactError(ValueError):
    """The artifact folder is missing, incomplete, or does not match its manifest."""


@dataclass(frozen=True)
class Artifact:
    """A loaded artifact: the callable model (logits) and its manifest."""

    model: nn.Module
    manifest: dict[str, Any]

    @property
    def input_shape(self) -> ImageShape:
        """The images the model takes."""
        return ImageShape.from_mapping(self.manifest["input"])

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def spec(self) -> ModelSpec:
        """Its image shape and number of classes, as every package describes a model."""
        return ModelSpec(self.input_shape, self.num_classes)


class ExportedModel(nn.Module):
    """An exported program as an ``nn.Module``; it is frozen in eval mode, so ``train()``/``eval()`` are no-ops.

    (``ExportedProgram.module()`` raises on ``eval()``; code that evaluates any model calls it.)
    """

    def __init__(self, program: torch.export.ExportedProgram) -> None:
        super().__init__()
        self.graph_module = program.module()

    def train(self, mode: bool = True) -> ExportedModel:
        self.training = False
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph_module(x)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_program(model: nn.Module, input_shape: tuple[int, int, int]) -> torch.export.ExportedProgram:
    """``torch.export`` the eval-mode model on CPU in fp32 with a dynamic batch dimension."""
    height, width, channels = input_shape
    example = torch.rand(2, channels, height, width)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    return torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))


def save_artifact(model: nn.Module, out_dir: str | Path, *, input_shape: tuple[int, int, int],
                  class_names: list[str], arch: str, dataset: str, training: dict[str, Any],
                  metrics: dict[str, Any]) -> Path:
    """Export ``model`` into ``out_dir``; the manifest is written last, so it only names complete files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    program = export_program(model, input_shape)
    with atomic_open(out_dir / MODEL_FILE, "wb") as f:
        torch.export.save(program, f)
    manifest = {
        "format": FORMAT,
        "input": ImageShape(*input_shape)._asdict(),
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "arch": arch,
        "dataset": dataset,
        "training": training,
        "metrics": metrics,
        "sha256": {MODEL_FILE: sha256_file(out_dir / MODEL_FILE)},
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "trades_avc_version": __version__,
    }
    atomic_write_text(out_dir / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    return out_dir


def read_manifest(art_dir: str | Path) -> dict[str, Any]:
    """Parse and check ``manifest.json`` and the hash of every file it lists."""
    art_dir = Path(art_dir)
    path = art_dir / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(f"{art_dir}: not a model artifact (no {MANIFEST_FILE}; expected "
                            f"{MODEL_FILE} + {MANIFEST_FILE} as written by training/train_tiny.py)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}: invalid JSON ({err})") from err
    missing = [k for k in REQUIRED_FIELDS if k not in manifest]
    if missing:
        raise ArtifactError(f"{path}: missing field(s) {', '.join(missing)}")
    if manifest["format"] != FORMAT:
        raise ArtifactError(f"{path}: format {manifest['format']!r}, this version reads format {FORMAT}")
    if not all(k in manifest["input"] for k in ImageShape._fields):
        raise ArtifactError(f"{path}: 'input' must give height, width and channels")
    if MODEL_FILE not in manifest["sha256"]:
        raise ArtifactError(f"{path}: 'sha256' must list {MODEL_FILE}")
    for name, expected in manifest["sha256"].items():
        file = art_dir / name
        if not file.is_file():
            raise ArtifactError(f"{file}: listed in the manifest but missing")
        actual = sha256_file(file)
        if actual != expected:
            raise ArtifactError(f"{file}: sha256 {actual} does not match the manifest's {expected} "
                                f"(corrupted or replaced; re-export the model)")
    return manifest


def load_artifact(art_dir: str | Path, device: str | torch.device = "cpu") -> Artifact:
    """Verify and load an artifact; the model returns logits for float N x C x H x W in [0, 1]."""
    manifest = read_manifest(art_dir)
    program = torch.export.load(Path(art_dir) / MODEL_FILE)
    return Artifact(ExportedModel(program).to(device), manifest)
