"""Atomic, checksummed training checkpoints that carry everything needed for a bit-identical resume.

Loading a checkpoint must never run code and must notice a damaged file, so the format is:

    trades-avc checkpoint v1\\n
    sha256 <64 hex digits of the payload>\\n
    <payload: torch.save of plain data only: tensors, numbers, strings, None, lists, tuples, dicts>

The payload is read with ``torch.load(weights_only=True)``, which refuses any other object instead
of unpickling it. Everything saved is already plain: model, optimiser and scheduler state dicts
(MultiStepLR's ``collections.Counter`` is on torch's own allowlist), the history, the flags, and
the RNG states, whose one numpy array is stored as a tensor. So no safe globals are registered.

Header and payload go out in one atomic write (a temp file renamed over the old one), so a crash
mid-save leaves the previous checkpoint whole and never a payload without its checksum. A file in
the format from before the checksum (a bare ``torch.save``) is refused rather than loaded with a
warning: damage in it would go unnoticed, and its numpy RNG state is an object that
``weights_only`` loading refuses anyway; the message says how to go on (start over, or evaluate
the run's artifact).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import pickle
import random
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from avc_common.atomic import atomic_open

MAGIC = b"trades-avc checkpoint v1\n"
_HASH_LINE = re.compile(rb"sha256 ([0-9a-f]{64})")
_ZIP = b"PK\x03\x04"  # how every torch.save file starts, the format before the checksum included
_EXPECTED = "expected a checkpoint.pt written by train_tiny.py"


class CheckpointError(ValueError):
    """The file is missing, damaged, foreign or does not fit: one sentence naming the file, the fault and
    what was expected, which the commands print as ``error: ...`` and exit 2."""


def rng_state() -> dict[str, Any]:
    """Every random generator the training loop draws from, as plain data (see the module docstring)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos,
                                                       has_gauss, gauss), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seal(payload: bytes) -> bytes:
    """``payload`` behind the header that carries its sha256 (the bytes a checkpoint file holds)."""
    return MAGIC + b"sha256 " + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def save_checkpoint(path: Path, **payload: Any) -> None:
    """Write ``payload`` plus the RNG states, sealed, in one atomic write: a kill mid-save keeps the previous file."""
    buffer = io.BytesIO()
    torch.save({**payload, "rng": rng_state()}, buffer)
    with atomic_open(path, "wb") as f:
        f.write(seal(buffer.getvalue()))


def load_checkpoint(path: Path, expect: Mapping[str, type] | None = None) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (RNG states are not applied here).

    ``expect`` maps the keys the caller needs to their types. Raises :class:`CheckpointError` for a
    missing, damaged, foreign or pre-checksum file, and for a missing key or a value of another type.
    """
    payload = _unseal(path)
    try:
        ckpt = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path} holds objects other than tensors and plain data, refused because loading "
                              f"them could run code; {_EXPECTED}") from err
    except Exception as err:  # whatever torch's reader raises on bytes that hash right but are no torch file
        raise CheckpointError(f"{path} has the checkpoint header but its payload is not readable "
                              f"({type(err).__name__}); {_EXPECTED}") from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not the dict of training state; {_EXPECTED}")
    for key, kind in (expect or {}).items():
        if key not in ckpt:
            raise CheckpointError(f"{path} has no {key!r} entry; {_EXPECTED}")
        if not isinstance(ckpt[key], kind):
            raise CheckpointError(f"{path} has a {type(ckpt[key]).__name__} as its {key!r} entry, expected a "
                                  f"{kind.__name__}; {_EXPECTED}")
    return ckpt


def _unseal(path: Path) -> bytes:
    """The payload of ``path`` once its header and checksum check out."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path} cannot be read ({err.strerror or err}); {_EXPECTED}") from err
    if not data:
        raise CheckpointError(f"{path} is empty (0 bytes); {_EXPECTED}")
    if data.startswith(_ZIP):
        raise CheckpointError(f"{path} has no checksum header: it is a bare torch.save file, as checkpoints were "
                              f"before they carried a sha256, and is refused unread; run train_tiny.py without "
                              f"--resume to start over, or evaluate the run's artifact/ folder instead")
    if not data.startswith(MAGIC):
        raise CheckpointError(f"{path} is not a trades-avc checkpoint (it does not start with "
                              f"{MAGIC.strip().decode()!r}); {_EXPECTED}")
    line, _, payload = data[len(MAGIC):].partition(b"\n")
    match = _HASH_LINE.fullmatch(line)
    if match is None:
        raise CheckpointError(f"{path} is damaged: its second line is not 'sha256 <64 hex digits>'; {_EXPECTED}")
    if hashlib.sha256(payload).hexdigest().encode() != match.group(1):
        raise CheckpointError(f"{path} is damaged (truncated or changed since it was written): its contents do "
                              f"not match the sha256 in its header")
    return payload


def load_weights(module: nn.Module, state: Mapping[str, Any], path: Path, what: str) -> None:
    """``module.load_state_dict(state)``, a mismatch refused with one sentence instead of torch's many lines.

    ``what`` names the model in the message (e.g. "the small_cnn model for fashion_mnist").
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and not _fits(state[k], expected[k])]
    found = [f"{label} {_some(keys)}" for label, keys in
             (("missing", missing), ("unexpected", unexpected), ("wrong shape or type for", wrong)) if keys]
    if found:
        raise CheckpointError(f"{path} does not hold the weights of {what}: {'; '.join(found)}")
    module.load_state_dict(state)


def _fits(value: Any, like: torch.Tensor) -> bool:
    return isinstance(value, torch.Tensor) and value.shape == like.shape


def _some(names: list[str], shown: int = 3) -> str:
    """A few tensor names for a one-line message: ``a, b, c and 5 more``."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


@contextlib.contextmanager
def restoring(path: Path, what: str) -> Iterator[None]:
    """Turn torch's or numpy's complaint about restoring ``what`` from ``path`` into a :class:`CheckpointError`."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} has a {what} that does not fit this run ({detail})") from err
