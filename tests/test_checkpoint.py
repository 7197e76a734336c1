"""Checkpoints are loaded without running code, damage is noticed, and every bad file is one line and exit 2.

The same bad files go to ``training/evaluate.py --model`` and to ``train_tiny.py --resume``: crafted
pickles (their payload must not run), empty, truncated, random and byte-flipped files, a checkpoint
in the format from before the checksum, a dict without the training state and a model missing a tensor.
"""
from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from training import evaluate, train_tiny
from training.checkpoint import load_checkpoint, save_checkpoint, seal


def train_args(data: Path, out: Path, epochs: int = 1) -> list[str]:
    """A run of a few seconds: one epoch on 64 images, no evaluation, no export."""
    return ["--dataset", "fashion_mnist", "--data", str(data), "--arch", "small_cnn", "--epsilon", "0.1",
            "--step-size", "0.03", "--steps", "1", "--batch-size", "32", "--epochs", str(epochs),
            "--train-images", "64", "--eval-images", "0", "--final-eval-images", "-1", "--no-export",
            "--no-progress", "--threads", "1", "--output", str(out)]


def eval_args(model: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--steps", "1", "--losses", "ce", "--images", "16", "--device", "cpu",
            "--no-progress", *extra]


@pytest.fixture(scope="module")
def genuine(fmnist_dir, tmp_path_factory) -> Path:
    """A real checkpoint.pt from one epoch of train_tiny.py."""
    out = tmp_path_factory.mktemp("genuine")
    assert train_tiny.main(train_args(fmnist_dir, out)) == 0
    return out / "checkpoint.pt"


class RunsCode:
    """Unpickling this creates ``marker``: proof that loading ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def without_rng(ckpt: dict) -> dict:
    return {k: v for k, v in ckpt.items() if k != "rng"}


def flip_middle(data: bytes) -> bytes:
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    return bytes(flipped)


def missing_tensor(good: Path, path: Path) -> None:
    ckpt = load_checkpoint(good)
    del ckpt["model"][next(iter(ckpt["model"]))]
    save_checkpoint(path, **without_rng(ckpt))


# name -> (writes the bad file at path from the genuine one, words the one-line message must hold)
BAD: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "crafted pickle": (lambda good, path: path.write_bytes(torch_bytes({"model": RunsCode(path.with_name("ran"))})),
                       "no checksum header"),
    "crafted pickle with a forged checksum": (
        lambda good, path: path.write_bytes(seal(torch_bytes({"model": RunsCode(path.with_name("ran"))}))),
        "could run code"),
    "empty": (lambda good, path: path.write_bytes(b""), "is empty"),
    "truncated": (lambda good, path: path.write_bytes(good.read_bytes()[:good.stat().st_size // 2]), "damaged"),
    "random bytes": (lambda good, path: path.write_bytes(np.random.default_rng(0).bytes(4096)),
                     "not a trades-avc checkpoint"),
    "flipped byte": (lambda good, path: path.write_bytes(flip_middle(good.read_bytes())), "damaged"),
    "format before the checksum": (lambda good, path: path.write_bytes(torch_bytes(load_checkpoint(good))),
                                   "no checksum header"),
    "wrong dict": (lambda good, path: save_checkpoint(path, weights=[1, 2, 3]), "no 'model' entry"),
    "missing tensor": (missing_tensor, "missing"),
}


def assert_refused(code: int, err: str, flag: str, words: str, path: Path) -> None:
    assert code == 2, err
    assert err.startswith(f"error: {flag} ") and err.count("\n") == 1, err
    assert words in err and str(path) in err, err
    assert not path.with_name("ran").exists(), "loading the checkpoint ran code from it"


@pytest.mark.parametrize("case", sorted(BAD))
def test_evaluate_refuses_a_bad_checkpoint(case, genuine, tmp_path, capsys):
    write, words = BAD[case]
    path = tmp_path / "checkpoint.pt"
    write(genuine, path)
    code = evaluate.main(eval_args(path))
    assert_refused(code, capsys.readouterr().err, "--model", words, path)


@pytest.mark.parametrize("case", sorted(BAD))
def test_resume_refuses_a_bad_checkpoint(case, genuine, fmnist_dir, tmp_path, capsys):
    write, words = BAD[case]
    path = tmp_path / "checkpoint.pt"
    write(genuine, path)
    code = train_tiny.main(train_args(fmnist_dir, tmp_path, epochs=2) + ["--resume"])
    assert_refused(code, capsys.readouterr().err, "--resume", words, path)
    assert not (tmp_path / "metrics.jsonl").exists(), "trained before refusing the checkpoint"


def test_evaluate_reads_the_data_from_data_or_else_from_where_the_checkpoint_was_trained(
        genuine, fmnist_dir, tmp_path):
    out = tmp_path / "eval.json"
    assert evaluate.main(eval_args(genuine, "--images", "200", "--json", str(out))) == 0
    assert json.loads(out.read_text())["images"] == 128  # the fixture's test split, not the default location
    moved = tmp_path / "checkpoint.pt"
    ckpt = load_checkpoint(genuine)
    ckpt["args"]["data"] = str(tmp_path / "gone")  # the data set moved after training
    save_checkpoint(moved, **without_rng(ckpt))
    assert evaluate.main(eval_args(moved, "--data", str(fmnist_dir), "--json", str(out))) == 0
    assert json.loads(out.read_text())["images"] == 16


def test_evaluate_says_a_missing_model_is_not_found(tmp_path, capsys):
    assert evaluate.main(eval_args(tmp_path / "checkpoint.pt")) == 2
    err = capsys.readouterr().err
    assert "--model" in err and "not found" in err and "resume" not in err




def test_resume_refuses_optimizer_state_that_does_not_fit(genuine, fmnist_dir, tmp_path, capsys):
    ckpt = load_checkpoint(genuine)
    ckpt["optimizer"]["param_groups"] = []
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, **without_rng(ckpt))
    code = train_tiny.main(train_args(fmnist_dir, tmp_path, epochs=2) + ["--resume"])
    assert_refused(code, capsys.readouterr().err, "--resume", "optimizer state that does not fit", path)
