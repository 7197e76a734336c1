"""The score's verified adversarials, exported beside its report so that other tools can take them further.

Two forms of the same images (docs/scoring.md "Exported adversarials"):

- ``adversarials.npz``: ``images`` (uint8 N x H x W x C), the evaluation set's ``indices`` and ``names``, the true
  ``labels``, the model's ``adversarial_labels`` for each image (from verification) and the ``distances`` (the
  image's score, as in results.json), one row per image that an attack fooled and whose adversarial re-verified;
- ``adversarials/``: the competition's format (one ``.npy`` per image and ``labels.yml`` of the *true* labels), which
  every reader of an evaluation set takes, e.g. ``avc-score --data OUTPUT/adversarials`` or ``defense check --data``.
  A file keeps the name of its input where the input was a folder; other sources' names get ``.npy`` appended.

Both are rewritten after each chunk like the other reports. The archive is written atomically. In the folder each
``.npy`` is written atomically once, when its image is first exported (a chunk's adversarials never change once it
is done, and ``run.json`` pins the run an output folder holds), and ``labels.yml``, which alone defines the set, is
rewritten last: at every moment the folder is a complete evaluation set, and a chunk costs only its own new files.
No image fooled leaves no folder (an evaluation set holds at least one image).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from attacks.scoring.pipeline import Scores
from avc_common.atomic import atomic_open, atomic_write_text
from avc_common.data.evalset import LABELS_FILE, labels_yaml

ARCHIVE = "adversarials.npz"
FOLDER = "adversarials"


def exported_rows(scores: Scores, labels: np.ndarray) -> np.ndarray:
    """The scored images (positions) with a verified adversarial: fooled by an attack, and re-classified as other
    than their true label (a misclassified clean image is no adversarial of anything)."""
    best = scores.best
    verified = scores.verified_labels
    return np.flatnonzero(np.isfinite(best) & (best > 0) & (verified >= 0) & (verified != labels[:len(best)]))


def export_adversarials(output: Path, scores: Scores, indices: np.ndarray, names: list[str], labels: np.ndarray,
                        keep_names: bool) -> int:
    """Write ``OUTPUT/adversarials.npz`` and ``OUTPUT/adversarials/`` for the chunks in ``scores``; how many images.

    ``keep_names``: the evaluation set was a folder, so its names are file names to keep."""
    rows = exported_rows(scores, labels)
    picked = [names[i] for i in rows]
    with atomic_open(output / ARCHIVE, "wb") as f:
        np.savez(f, images=scores.adversarials[rows], indices=np.asarray(indices, dtype=np.int64)[rows],
                 names=np.array(picked, dtype=str), labels=np.asarray(labels, dtype=np.int64)[rows],
                 adversarial_labels=scores.verified_labels[rows].astype(np.int64),
                 distances=scores.best[rows].astype(np.float64))
    if len(rows):
        folder = output / FOLDER
        files = picked if keep_names else [f"{name}.npy" for name in picked]
        for file, i in zip(files, rows):
            if not (folder / file).exists():  # written whole or not at all (atomic), and unchanged since
                with atomic_open(folder / file, "wb") as f:
                    np.save(f, np.ascontiguousarray(scores.adversarials[i], dtype=np.uint8))
        atomic_write_text(folder / LABELS_FILE, labels_yaml(files, labels[rows]))
    return len(rows)
