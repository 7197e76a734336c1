"""Atomic training checkpoints that carry everything needed for a bit-identical resume."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avc_common.atomic import atomic_open


def rng_state() -> dict[str, Any]:
    """Every random generator the training loop draws from."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, **payload: Any) -> None:
    """Write ``payload`` plus the RNG states atomically: a kill mid-save keeps the previous file."""
    with atomic_open(path, "wb") as f:
        torch.save({**payload, "rng": rng_state()}, f)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (RNG states are not applied here)."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: nothing to resume")
    return torch.load(path, map_location="cpu", weights_only=False)
