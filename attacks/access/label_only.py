"""The attacks' view of a model (``LabelOnlyModel``, docs/architecture.md): uint8 images in, labels out.

Two implementations: :class:`ArtifactModel` runs an exported artifact in-process (tests,
fast experiments) and :class:`RemoteModel` asks the gRPC server. Both count the images
they were asked about; per-image budgets and the best adversarial live in
:class:`attacks.access.budgeted.BudgetedModel`, which wraps either.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from avc_common.artifact import load_artifact
from avc_common.images import ModelSpec
from avc_common.rpc.client import DefenseClient
from avc_common.tensors import to_model_input


class LabelOnlyModel(Protocol):
    """Labels (int64, N) for uint8 N x H x W x C images; ``queries`` counts every image asked about."""

    info: ModelSpec
    queries: int

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


class TorchModel:
    """Any logits function of float N x C x H x W in [0, 1] (a torch module, a lambda) as a label-only model.

    Runs in chunks of ``batch_size`` under ``torch.inference_mode`` on ``device``. ``net`` stays public: the
    harness (never an attack) uses it for the white-box reference of a model it owns.
    """

    def __init__(self, net: Callable[[torch.Tensor], torch.Tensor], info: ModelSpec,
                 device: str | torch.device = "cpu", batch_size: int = 1024) -> None:
        self.net = net
        self.info = info
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.queries = 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.info.shape.check(images)
        labels = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                x = to_model_input(images[start:start + self.batch_size], self.device)
                labels.append(self.net(x).argmax(dim=1).to("cpu", torch.int64).numpy())
        self.queries += len(images)
        return np.concatenate(labels) if labels else np.empty(0, dtype=np.int64)


class ArtifactModel(TorchModel):
    """A model artifact folder (hash-checked by :func:`avc_common.artifact.load_artifact`), run in-process."""

    def __init__(self, art_dir: str | Path, device: str | torch.device = "cpu", batch_size: int = 1024) -> None:
        artifact = load_artifact(art_dir, device=device)
        super().__init__(artifact.model, artifact.spec, device, batch_size)
        self.manifest = artifact.manifest


class RemoteModel:
    """The gRPC defense server through its one client; retries and request chunking are the client's job."""

    def __init__(self, client: DefenseClient) -> None:
        self.client = client
        self.info = client.info().model
        self.queries = 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.info.shape.check(images)
        labels = self.client.predict(images)
        self.queries += len(images)
        return labels
