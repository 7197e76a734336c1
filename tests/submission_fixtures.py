"""Builders shared by test_check.py and test_container.py: a small artifact and a crisp.yaml for it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from defense.artifact import save_artifact, sha256_file
from defense.submission import read_command
from training.models import create_model

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
SHAPE = (28, 28, 1)


def make_artifact(out_dir: Path) -> Path:
    """The small CNN, untrained, biases zeroed so that random images get varied labels."""
    torch.manual_seed(0)
    net = create_model("small_cnn", 10, 1, [0.3], [0.4]).eval()
    with torch.no_grad():
        for layer in net.modules():
            if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
                layer.bias.zero_()
    return save_artifact(net, out_dir, input_shape=SHAPE, class_names=[f"c{i}" for i in range(10)],
                         arch="small_cnn", dataset="fashion_mnist", training={"loss": "trades"}, metrics={})


def crisp_doc(artifact: Path) -> dict[str, Any]:
    """A valid crisp.yaml for ``artifact`` and the repository's Dockerfile (absolute paths)."""
    entrypoint, _, _ = read_command(DOCKERFILE)
    return {
        "version": 1,
        "submission": {"name": "test", "authors": [{"name": "Tester", "email": "t@example.org"}],
                       "track": "robust_model"},
        "artifact": {"path": str(artifact), "sha256": sha256_file(artifact / "model.pt2")},
        "input": {"height": 28, "width": 28, "channels": 1, "num_classes": 10},
        "container": {"image": "defense-server:test", "dockerfile": str(DOCKERFILE), "port": 50051,
                      "entrypoint": entrypoint},
        "resources": {"cpu": 2, "gpu": 0, "memory": "4Gi"},
        "query_budget": {"per_image": 1000},
    }


def write_crisp(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *SHAPE), dtype=np.uint8)
