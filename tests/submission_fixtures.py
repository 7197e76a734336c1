"""Builders shared by test_check.py and test_container.py: a small artifact and a crisp.yaml for it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml
from model_fixtures import SHAPE, make_artifact  # noqa: F401 (re-exported for the tests)

from avc_common.artifact import sha256_file
from defense.submission.manifest import read_command

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"



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
