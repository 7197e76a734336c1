"""The score's two figures: the distance CDF (one line per attack and the minimum) and an adversarial gallery.

matplotlib figures without pyplot (no display, no global state); files are written atomically.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from attacks.scoring.pipeline import Scores
from avc_common.atomic import atomic_open
from avc_common.images import to_unit


def plot_cdf(scores: Scores, path: Path) -> None:
    """:func:`cdf_figure` as a PNG at ``path``."""
    with atomic_open(path, "wb") as f:
        cdf_figure(scores).savefig(f, format="png", dpi=120)


def cdf_figure(scores: Scores) -> Figure:
    """Fraction of scored images with distance <= x, per attack, for the suite's minimum and the reference.

    Curves stop below 1 by the share of images that attack did not fool (no worst-case values drawn). Both axes start
    at 0, where every curve starts: no distance is negative, and matplotlib's margins would otherwise start the x
    axis below 0 (all of it, when every image was misclassified and every distance is 0).
    """
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    n = scores.distances.shape[1]
    curves = [("min over attacks (score)", scores.best, {"lw": 3.5, "color": "black", "alpha": 0.35})]
    curves += [(name, scores.distances[a], {"lw": 1.3}) for a, name in enumerate(scores.names)]
    if scores.reference is not None:
        curves.append(("white-box reference", scores.reference, {"lw": 1.5, "color": "grey", "ls": "--"}))
    for label, values, style in curves:
        x = np.sort(values[np.isfinite(values)])
        # unclipped: a curve's rise at 0 (misclassified images) would otherwise hide behind the y axis
        ax.step(np.r_[0.0, x], np.arange(len(x) + 1) / n, where="post", label=label, clip_on=False, **style)
    ax.set_xlabel("L2 distance on [0, 1] (verified uint8 adversarial)")
    ax.set_ylabel("fraction of images fooled within distance")
    ax.set_xlim(left=0)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"Distance CDF over {n} images")
    fig.tight_layout()
    return fig


def plot_gallery(clean: np.ndarray, scores: Scores, labels: np.ndarray, class_names: list[str], path: Path,
                 count: int = 6) -> None:
    """Up to ``count`` fooled images, spread from the closest to the farthest: clean, adversarial, perturbation.

    The perturbation is amplified to the full grey range (0.5 = unchanged) so that small ones are visible.
    """
    best = scores.best
    fooled = np.flatnonzero(np.isfinite(best) & (best > 0))
    order = fooled[np.argsort(best[fooled])]
    picked = order[np.unique(np.linspace(0, len(order) - 1, min(count, len(order))).round().astype(int))]
    fig = Figure(figsize=(6.6, 2.3 * max(len(picked), 1)))
    axes = fig.subplots(max(len(picked), 1), 3, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if not len(picked):
        axes[0, 1].text(0.5, 0.5, "no image was fooled", ha="center", va="center")

    def name(label: int) -> str:
        return class_names[label] if 0 <= label < len(class_names) else str(label)

    for row, i in enumerate(picked):
        x, adv = to_unit(clean[i]), to_unit(scores.adversarials[i])
        gain = 1 / (2 * max(float(np.abs(adv - x).max()), 1e-12))
        amplified = 0.5 + gain * (adv - x)
        panels = ((x, f"clean: {name(int(labels[i]))}"),
                  (adv, f"adv: {name(int(scores.verified_labels[i]))}\nL2 {best[i]:.3f}"),
                  (amplified, f"perturbation x{gain:.0f}\n{scores.names[scores.winner[i]]}"))
        for ax, (image, title) in zip(axes[row], panels):
            cmap = "gray" if image.shape[-1] == 1 else None
            ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap=cmap, vmin=0, vmax=1)
            ax.set_title(title, fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
