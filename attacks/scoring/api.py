"""Scoring from Python in one call: ``attacks.score(model, images, labels)`` returns :class:`Results`.

    import attacks
    results = attacks.score(net, x_test[:100], y_test[:100], surrogates=[surrogate_net], output="runs/nb")
    print(results.summary["median"], results.distances[:5])
    results.save("runs/nb-copy")                       # results.json, report.md, plots, adversarials

It is the pipeline of ``python attacks/score.py`` (the same suite, ledger, seeds per chunk and attack, and
verification), so the same images, suite and seed give the same per-image distances as the command. The command
adds what belongs to a command: data sets and sampling, Ray workers, exit codes. The pieces both share live here:
the suite by name (:func:`named_suite`), the fingerprint a resumed run must match (:func:`fingerprint`,
:func:`check_resumable`) and the saved outputs (:meth:`Results.save`).
"""
from __future__ import annotations

import hashlib
import json
import tempfile
import time
import warnings
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attacks.access.label_only import ArtifactModel, LabelOnlyModel, RemoteModel, TorchModel
from attacks.methods.base import Attack
from attacks.methods.registry import build_attack, build_suite, name_attacks
from attacks.methods.suite import SuiteEntry
from attacks.scoring.export import export_adversarials
from attacks.scoring.pipeline import Scores, SuiteRun, collect, scored, worst_case_l2
from attacks.scoring.plots import plot_cdf, plot_gallery
from attacks.scoring.report import RunInfo, build_results, markdown
from attacks.whitebox.reference import minimal_l2
from avc_common.artifact import save_artifact
from avc_common.atomic import atomic_write_text
from avc_common.images import ImageShape, ModelSpec, to_uint8
from avc_common.rpc.client import DefenseClient

DEFAULT_CONCURRENCY = {"target": 4, "model": 1}  # units at once, by where the model runs (score.py --concurrency)
RUN_FILE = "run.json"


class BadInput(ValueError):
    """A model, image array, setting or folder a score cannot use; the message says what was expected."""


@dataclass
class Results:
    """A finished (or, from the command, partial) score: per-image arrays, the report, and :meth:`save`.

    ``images`` and ``labels`` are the scored images (uint8 N x H x W x C) in order; ``scores`` holds the first
    ``len(distances)`` of them (all, once complete).
    """

    scores: Scores
    info: RunInfo
    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    names: list[str]
    wall_s: float
    complete: bool = True
    error: str | None = None

    @property
    def distances(self) -> np.ndarray:
        """Each image's score: the smallest verified L2 on [0, 1] over the attacks, 0 for a misclassified image,
        the worst-case value (docs/scoring.md) for one no attack fooled."""
        best = self.scores.best
        return scored(best, worst_case_l2(self.images[:len(best)]))

    @property
    def fooled(self) -> np.ndarray:
        """Which correctly classified images some attack fooled."""
        best = self.scores.best
        return (best > 0) & np.isfinite(best)

    @property
    def adversarials(self) -> np.ndarray:
        """Each image's closest verified adversarial (uint8 N x H x W x C; the clean image where none)."""
        return self.scores.adversarials

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data: what ``results.json`` holds."""
        return build_results(self.info, self.scores, self.indices, self.names, self.labels,
                             worst_case_l2(self.images), len(self.indices), self.wall_s, self.complete, self.error)

    @property
    def summary(self) -> dict[str, Any]:
        """Mean, median, clean accuracy, per-attack figures and queries (``results.json``'s ``summary``)."""
        return self.to_dict()["summary"]

    def save(self, folder: str | Path, keep_names: bool = False) -> dict[str, Any]:
        """Write results.json, report.md, cdf.png, gallery.png and the exported adversarials (adversarials.npz and
        the competition-format adversarials/, named as the images were with ``keep_names``) into ``folder``,
        each atomically; returns the report."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        results = self.to_dict()
        atomic_write_text(folder / "results.json", json.dumps(results, indent=1) + "\n")
        atomic_write_text(folder / "report.md", markdown(results))
        plot_cdf(self.scores, folder / "cdf.png")
        plot_gallery(self.images, self.scores, self.labels, self.info.class_names, folder / "gallery.png")
        export_adversarials(folder, self.scores, self.indices, self.names, self.labels, keep_names=keep_names)
        return results


def named_suite(preset: str | None, attacks: Sequence[str] | None, surrogates: Sequence[str],
                device: torch.device, prefix: str = "") -> tuple[dict[str, Attack], list[str]]:
    """The suite by column name: ``attacks`` (registry names, at their defaults) if given, else ``preset``; and notes
    on what a preset left out for want of surrogates. Raises :class:`BadInput` naming the setting (after
    ``prefix``: ``--`` for the command's flags)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if attacks is not None:
                names = [name.strip() for name in attacks if name.strip()]
                if not names:
                    raise BadInput(f"{prefix}attacks: give at least one attack name")
                suite = [build_attack(SuiteEntry(name), surrogates, device) for name in names]
            else:
                suite = build_suite(preset, surrogates=surrogates, device=device)
        except BadInput:
            raise
        except ValueError as err:
            raise BadInput(f"{prefix}{'attacks' if attacks is not None else 'preset'}: {err}") from None
    if not suite:
        raise BadInput(f"{prefix}preset {preset}: nothing left to run without surrogate models")
    return name_attacks(suite), [str(w.message) for w in caught]


def fingerprint(suite: dict[str, Attack], model: LabelOnlyModel, images: np.ndarray, labels: np.ndarray,
                indices: np.ndarray, budget: int, pooled: bool, seed: int, batch_images: int,
                reference_steps: int | None, chain: bool = False) -> dict[str, Any]:
    """Everything a score's results depend on; a resumed run must match it exactly (``chain`` is recorded only
    when set, so that runs saved before it existed still resume)."""
    digest = hashlib.sha256(images.tobytes() + labels.astype(np.int64).tobytes()).hexdigest()
    manifest = getattr(model, "manifest", None)
    return {"attacks": {name: repr(attack) for name, attack in suite.items()}, "budget": budget,
            "pooled": pooled, "seed": seed, "batch_images": batch_images,
            "model": {"shape": list(model.info.shape), "num_classes": model.info.num_classes,
                      "sha256": manifest["sha256"] if manifest else None},
            "reference_steps": reference_steps, "images_sha256": digest, "indices": indices.tolist(),
            **({"chain": True} if chain else {})}


def check_resumable(output: Path, settings: dict[str, Any], flag: str = "output",
                    how: str = "call again with the same arguments") -> None:
    """Record the run's settings in ``output``, or raise :class:`BadInput` (naming ``flag``, saying ``how`` to
    resume) if it holds a different run."""
    path = output / RUN_FILE
    if path.exists():
        saved = json.loads(path.read_text())
        if saved != settings:
            differ = sorted(k for k in settings.keys() | saved.keys() if saved.get(k) != settings.get(k))
            raise BadInput(f"{flag} {output} holds a run with other settings ({', '.join(differ)}); "
                           f"{how} to resume it, or pass a new {flag}")
    else:
        atomic_write_text(path, json.dumps(settings, indent=1) + "\n")


def as_images(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 N x H x W x C as they are, or float N x C x H x W in [0, 1] (numpy or torch) rounded to the uint8
    lattice the scorer works on (the competition's images are uint8)."""
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if x.ndim != 4:
        raise BadInput(f"images: expected a batch, uint8 N x H x W x C or float N x C x H x W in [0, 1]; got shape "
                       f"{x.shape}")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise BadInput(f"images: expected uint8 N x H x W x C or float N x C x H x W in [0, 1], got {x.dtype}")
    if x.shape[1] not in (1, 3):
        raise BadInput(f"images: float images are N x C x H x W with C 1 or 3, got shape {x.shape}")
    if not np.isfinite(x).all() or x.min(initial=0.0) < 0 or x.max(initial=0.0) > 1:
        raise BadInput("images: float images must lie in [0, 1]")
    return np.ascontiguousarray(to_uint8(x.transpose(0, 2, 3, 1)))


def as_labels(labels: np.ndarray | torch.Tensor | Sequence[int], count: int, num_classes: int) -> np.ndarray:
    """``labels`` as int64, one per image, each a class of the model."""
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.shape != (count,) or not np.issubdtype(y.dtype, np.integer):
        raise BadInput(f"labels: expected {count} integer labels, one per image, got {y.dtype} {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise BadInput(f"labels: expected classes in [0, {num_classes}), got {y.min()}..{y.max()}")
    return y.astype(np.int64)


def open_model(model: Any, shape: ImageShape, device: torch.device,
               stack: ExitStack) -> tuple[LabelOnlyModel, dict[str, Any], list[str], nn.Module | None]:
    """The label-only view of ``model`` (a module, an artifact folder, a ``host:port`` target or a label-only model),
    its description for the report, its class names, and the module whose gradients the white-box reference may
    use (``None`` for a server)."""
    if isinstance(model, nn.Module):
        net = model.eval().to(device)
        with torch.no_grad():
            logits = net(torch.zeros(1, shape.channels, shape.height, shape.width, device=device))
        wrapped = TorchModel(net, ModelSpec(shape, int(logits.shape[-1])), device)
        return wrapped, {"module": type(model).__name__}, numbered(wrapped), net
    if isinstance(model, (str, Path)) and Path(model).is_dir():
        try:
            artifact = ArtifactModel(model, device=device)
        except (ValueError, OSError) as err:
            raise BadInput(f"model {model}: {err}") from None
        manifest = artifact.manifest
        return artifact, {"artifact": str(model), "manifest": manifest}, list(manifest["class_names"]), artifact.net
    if isinstance(model, str) and ":" in model:
        client = stack.enter_context(DefenseClient(model, health_checked=True))
        spec = client.info()
        return RemoteModel(client), {"target": model, "info": asdict(spec)}, list(spec.class_names), None
    if callable(model) and isinstance(getattr(model, "info", None), ModelSpec):
        return model, {"label_only": type(model).__name__}, numbered(model), getattr(model, "net", None)
    raise BadInput(f"model: expected a torch module, an artifact folder, a HOST:PORT target or a label-only model, "
                   f"got {model!r}")


def numbered(model: LabelOnlyModel) -> list[str]:
    """Class names for a model that has none: its class indices."""
    return [str(c) for c in range(model.info.num_classes)]


def surrogate_folders(surrogates: Sequence[nn.Module | str | Path], shape: ImageShape, num_classes: int,
                      folder: Path) -> tuple[str, ...]:
    """Artifact folders for ``surrogates``: folders as they are, modules exported into ``folder`` (the attacks load
    surrogates by folder, once per process; an exported module counts as naturally trained)."""
    paths = []
    for i, surrogate in enumerate(surrogates):
        if isinstance(surrogate, nn.Module):
            surrogate = save_artifact(surrogate.eval().cpu(), folder / f"surrogate-{i}", input_shape=tuple(shape),
                                      class_names=[str(c) for c in range(num_classes)], arch=type(surrogate).__name__,
                                      dataset="unknown", training={"loss": "unknown"}, metrics={})
        elif not Path(surrogate).is_dir():
            raise BadInput(f"surrogates[{i}]: expected a torch module or an artifact folder, got {surrogate!r}")
        paths.append(str(surrogate))
    return tuple(paths)


def score(model: nn.Module | str | Path | LabelOnlyModel, images: np.ndarray | torch.Tensor,
          labels: np.ndarray | torch.Tensor | Sequence[int], *, preset: str = "top5",
          attacks: Sequence[str] | None = None, surrogates: Sequence[nn.Module | str | Path] = (),
          budget: int = 1000, pooled: bool = False, chain: bool = False, seed: int = 0, batch_images: int = 100,
          device: str | torch.device = "auto", reference: bool = False, reference_steps: int = 1000,
          concurrency: int | None = None, output: str | Path | None = None, progress: bool = True) -> Results:
    """Score ``model`` on ``images``/``labels`` with the suite ``preset`` (or the registry's ``attacks``), each attack
    spending ``budget`` label queries per image; the arguments mean what ``score.py``'s flags of the same names do.

    ``model``: a torch module taking float N x C x H x W in [0, 1], an artifact folder, a ``"host:port"`` defense
    server (or several: docs/scaling.md), or a label-only model. ``images``: uint8 N x H x W x C, or float N x C x
    H x W in [0, 1] (rounded to uint8). ``surrogates``: modules or artifact folders, for the transfer attacks.
    ``reference``: also the white-box FMN distance per image (a module or an artifact only). ``output``: ``None``
    keeps everything in memory; a folder gets the command's files after every chunk of ``batch_images``, and
    calling again with the same arguments resumes there. Raises :class:`BadInput` for what it cannot use.
    """
    try:
        chosen = torch.device("cuda" if torch.cuda.is_available() else "cpu") if str(device) == "auto" \
            else torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise BadInput(f"device: expected auto, cpu, cuda or cuda:N, got {device!r} ({err})") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"device {device}: CUDA is not available on this machine (use cpu or auto)")
    for name, value in (("budget", budget), ("batch_images", batch_images), ("reference_steps", reference_steps)):
        if not isinstance(value, int) or value < 1:
            raise BadInput(f"{name}: expected a positive integer, got {value!r}")
    x = as_images(images)
    started = time.perf_counter()
    with ExitStack() as stack:
        folder = Path(output) if output is not None else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="avc-score-")))
        label_only, described, class_names, net = open_model(model, ImageShape(*x.shape[1:]), chosen, stack)
        try:
            label_only.info.shape.check(x)
        except ValueError as err:
            raise BadInput(f"images: {err}") from None
        y = as_labels(labels, len(x), label_only.info.num_classes)
        if reference and net is None:
            raise BadInput("reference: needs the model's gradients (a torch module or an artifact folder)")
        folder.mkdir(parents=True, exist_ok=True)
        paths = surrogate_folders(surrogates, label_only.info.shape, label_only.info.num_classes, folder / "models")
        suite, notes = named_suite(preset, attacks, paths, chosen)
        indices = np.arange(len(x))
        if output is not None:
            check_resumable(folder, fingerprint(suite, label_only, x, y, indices, budget, pooled, seed, batch_images,
                                                reference_steps if reference else None, chain))
        where = "target" if isinstance(label_only, RemoteModel) else "model"
        info = RunInfo("attacks.score(...)", described, class_names,
                       {"dataset": "arrays", "data": None, "sample": "first", "images": len(x), "of": len(x)},
                       budget, pooled, seed, batch_images, {name: repr(a) for name, a in suite.items()}, notes,
                       concurrency or DEFAULT_CONCURRENCY[where], chain=chain)
        names = [f"{i:05d}" for i in indices]
        run = SuiteRun(label_only, x, y, suite, folder / "state", budget, pooled, seed, batch_images,
                       partial(minimal_l2, net, steps=reference_steps, device=chosen) if reference else None,
                       progress, info.concurrency, chain=chain)

        def results(chunks: list, complete: bool) -> Results:
            return Results(collect(chunks, list(suite)), info, x, y, indices, names, time.perf_counter() - started,
                           complete)

        run.run(lambda chunks: results(chunks, False).save(folder) if output is not None else None)
        done = results(run.chunks, True)
        if output is not None:
            done.save(folder)
        return done
