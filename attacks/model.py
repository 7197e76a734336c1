"""The attacks' view of a model (DESIGN.md "LabelOnlyModel"): uint8 images in, labels out.

Two implementations: :class:`ArtifactModel` runs an exported artifact in-process (tests,
fast experiments) and :class:`RemoteModel` asks the gRPC server. Both count the images
they were asked about; per-image budgets and the best adversarial live in
:class:`attacks.budgeted.BudgetedModel`, which wraps either.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from defense.artifact import load_artifact
from defense.client import DefenseClient


@dataclass(frozen=True)
class ModelInfo:
    """Input shape and number of classes of a served model."""

    height: int
    width: int
    channels: int
    num_classes: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """(height, width, channels): one image as a uint8 HWC array."""
        return self.height, self.width, self.channels


class LabelOnlyModel(Protocol):
    """Labels (int64, N) for uint8 N x H x W x C images; ``queries`` counts every image asked about."""

    info: ModelInfo
    queries: int

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


def _check_images(images: np.ndarray, info: ModelInfo) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.shape[1:] != info.shape:
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"expected uint8 N x {' x '.join(map(str, info.shape))} (HWC) images, got {got}")


class TorchModel:
    """Any logits function of float N x C x H x W in [0, 1] (a torch module, a lambda) as a label-only model.

    Runs in chunks of ``batch_size`` under ``torch.inference_mode`` on ``device``.
    """

    def __init__(self, net: Callable[[torch.Tensor], torch.Tensor], info: ModelInfo,
                 device: str | torch.device = "cpu", batch_size: int = 1024) -> None:
        self.net = net
        self.info = info
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.queries = 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        _check_images(images, self.info)
        labels = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                chunk = torch.from_numpy(np.array(images[start:start + self.batch_size]))  # a writable copy
                x = chunk.to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
                labels.append(self.net(x).argmax(dim=1).to("cpu", torch.int64).numpy())
        self.queries += len(images)
        return np.concatenate(labels) if labels else np.empty(0, dtype=np.int64)


class ArtifactModel(TorchModel):
    """A model artifact folder (hash-checked by :func:`defense.artifact.load_artifact`), run in-process."""

    def __init__(self, art_dir: str | Path, device: str | torch.device = "cpu", batch_size: int = 1024) -> None:
        artifact = load_artifact(art_dir, device=device)
        height, width, channels = artifact.input_shape
        super().__init__(artifact.model, ModelInfo(height, width, channels, artifact.num_classes), device, batch_size)
        self.manifest = artifact.manifest


class RemoteModel:
    """The gRPC defense server through its one client; retries and request chunking are the client's job."""

    def __init__(self, client: DefenseClient) -> None:
        self.client = client
        spec = client.info()
        self.info = ModelInfo(spec.height, spec.width, spec.channels, spec.num_classes)
        self.queries = 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        _check_images(images, self.info)
        labels = self.client.predict(images)
        self.queries += len(images)
        return labels
