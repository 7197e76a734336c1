"""The model artifact (docs/artifact.md): the one place that saves and loads it.

An artifact is a folder with ``model.pt2`` (a ``torch.export`` program taking float
N x C x H x W in [0, 1] with a dynamic batch dimension, normalisation inside) and
``manifest.json`` (shape, classes, provenance, metrics, sha256 of every file).
Loading checks every manifest field's type, verifies the hashes and opens the model with one
forward of the manifest's input shape, so that a tampered manifest, a truncated or foreign
model file, or a model whose input or output disagrees with its manifest is refused with one
:class:`ArtifactError` sentence instead of a deserialiser's traceback.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import zipfile
from collections.abc import Callable
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
        return self.manifest["num_classes"]

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


def _shown(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else f"holds {_shown(value)}; expected a non-empty string"


def _mapping(value: Any) -> str | None:
    return None if isinstance(value, dict) else f"holds {_shown(value)}; expected a JSON object"


def _format(value: Any) -> str | None:
    ok = _is_int(value, FORMAT) and value == FORMAT
    return None if ok else f"holds {_shown(value)}; expected {FORMAT}, the format this version reads"


def _input(value: Any) -> str | None:
    try:
        ImageShape.from_mapping(value)
    except ValueError as err:
        return str(err)
    return None


def _num_classes(value: Any) -> str | None:
    return None if _is_int(value, 1) else f"holds {_shown(value)}; expected a positive integer"


def _created(value: Any) -> str | None:
    try:
        dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return f"holds {_shown(value)}; expected an ISO 8601 time such as 2026-01-31T12:00:00+00:00"
    return None


def _optional_text(value: Any) -> str | None:
    return None if isinstance(value, str) else f"holds {_shown(value)}; expected a version string"


# field -> its rule: None when the value is right, else what it holds and what was expected
FIELDS: dict[str, Callable[[Any], str | None]] = {
    "format": _format, "input": _input, "num_classes": _num_classes, "arch": _text, "dataset": _text,
    "training": _mapping, "metrics": _mapping, "created": _created,
    "torch_version": _optional_text, "trades_avc_version": _optional_text,
}
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _field_problems(manifest: dict[str, Any], art_dir: Path) -> list[str]:
    """Every field of ``manifest`` whose type or range is wrong, each as 'FIELD holds X; expected Y'."""
    problems = []
    for name, rule in FIELDS.items():
        if name in manifest and (wrong := rule(manifest[name])) is not None:
            problems.append(wrong if name == "input" else f"{name} {wrong}")
    names, classes = manifest["class_names"], manifest["num_classes"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        problems.append(f"class_names holds {_shown(names)}; expected a list of strings, one name per class")
    elif _is_int(classes, 1) and len(names) != classes:
        problems.append(f"class_names holds {len(names)} name(s) but num_classes is {classes}; expected one name "
                        f"per class")
    hashes = manifest["sha256"]
    if not isinstance(hashes, dict) or MODEL_FILE not in hashes:
        problems.append(f"sha256 holds {_shown(hashes)}; expected a JSON object of file name to sha256 that lists "
                        f"{MODEL_FILE}")
        return problems
    for name, digest in hashes.items():
        if not (art_dir / name).resolve().is_relative_to(art_dir.resolve()):
            problems.append(f"sha256 names {name!r}; expected files inside the artifact folder")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            problems.append(f"sha256.{name} holds {_shown(digest)}; expected 64 lower-case hex digits")
    return problems


def read_manifest(art_dir: str | Path) -> dict[str, Any]:
    """Parse and check ``manifest.json``, field by field, and the hash of every file it lists."""
    art_dir = Path(art_dir)
    path = art_dir / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(f"{art_dir}: not a model artifact (no {MANIFEST_FILE}; expected "
                            f"{MODEL_FILE} + {MANIFEST_FILE} as written by training/train_tiny.py)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path}: invalid JSON ({err})") from err
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: holds {_shown(manifest)}; expected a JSON object of fields")
    missing = [k for k in REQUIRED_FIELDS if k not in manifest]
    if missing:
        raise ArtifactError(f"{path}: missing field(s) {', '.join(missing)}")
    problems = _field_problems(manifest, art_dir)
    if problems:
        raise ArtifactError(f"{path}: {'; '.join(problems)} (re-export the model, or correct the manifest)")
    for name, expected in manifest["sha256"].items():
        file = art_dir / name
        if not file.is_file():
            raise ArtifactError(f"{file}: listed in the manifest but missing")
        actual = sha256_file(file)
        if actual != expected:
            raise ArtifactError(f"{file}: sha256 {actual} does not match the manifest's {expected} "
                                f"(corrupted or replaced; re-export the model)")
    return manifest


def _load_program(file: Path) -> torch.export.ExportedProgram:
    """``torch.export.load`` of a file first checked to be a whole ``torch.export`` archive.

    The checks come first because torch, given a truncated or foreign file, logs a traceback
    and then raises from its legacy loader (``BadZipFile``); a file that passes them but still
    fails to deserialise can fail in many ways, all with the same fix.
    """
    fix = f"re-export the model (training/train_tiny.py writes {MODEL_FILE} with torch.export.save)"
    if not zipfile.is_zipfile(file):
        raise ArtifactError(f"{file}: not a torch.export archive (not a whole zip file: truncated or another "
                            f"format); {fix}")
    with zipfile.ZipFile(file) as archive:
        markers = [n for n in archive.namelist() if n.endswith("/archive_format")]
        if not markers or archive.read(markers[0]) != b"pt2":
            raise ArtifactError(f"{file}: a zip file but not a torch.export archive (no archive_format pt2 "
                                f"entry; e.g. a torch.save state dict); {fix}")
        damaged = archive.testzip()
    if damaged is not None:
        raise ArtifactError(f"{file}: its entry {damaged} is damaged (CRC mismatch); {fix}")
    try:
        return torch.export.load(file)
    except Exception as err:  # broad on purpose: any deserialisation failure means the same to the user
        raise ArtifactError(f"{file}: torch.export.load failed ({type(err).__name__}: {err}); {fix}") from None


def _check_forward(model: nn.Module, spec: ModelSpec, file: Path, device: str | torch.device) -> None:
    """One zero image of the manifest's shape through the model: logits 1 x num_classes, or ArtifactError.

    Caught here, a model/manifest mismatch is one sentence at load time rather than a guard failure at the
    first request to a server or the first batch of a score.
    """
    height, width, channels = spec.shape
    wanted = f"float 1 x {channels} x {height} x {width} (the manifest's input)"
    try:
        with torch.inference_mode():
            out = model(torch.zeros(1, channels, height, width, device=device))
    except torch.OutOfMemoryError:
        raise  # the device is full, the model may be fine
    except (AssertionError, RuntimeError) as err:  # a shape guard of the exported graph, or a kernel's complaint
        raise ArtifactError(f"{file}: does not take {wanted}: {type(err).__name__}: {err}; re-export the model "
                            f"or correct the manifest's input") from None
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != (1, spec.num_classes):
        raise ArtifactError(f"{file}: returns {got} for {wanted}, expected logits (1, {spec.num_classes}) for "
                            f"num_classes {spec.num_classes}; re-export the model or correct the manifest")


def load_artifact(art_dir: str | Path, device: str | torch.device = "cpu") -> Artifact:
    """Verify and load an artifact; the model returns logits for float N x C x H x W in [0, 1]."""
    manifest = read_manifest(art_dir)
    file = Path(art_dir) / MODEL_FILE
    artifact = Artifact(ExportedModel(_load_program(file)).to(device), manifest)
    _check_forward(artifact.model, artifact.spec, file, device)
    return artifact
