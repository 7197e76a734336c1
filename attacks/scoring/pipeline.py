"""Run a suite of attacks over an evaluation set in chunks, resumably, and collect each image's distances.

The unit of work is one attack on one chunk of ``batch_images`` images, on a fresh
:class:`BudgetedModel`: every attack gets the whole per-image budget (or pool), as each
attack did in the competition, and an image's score is the minimum over attacks
(docs/scoring.md). When a unit finishes, its ledger (:meth:`BudgetedModel.state`) is
saved atomically under ``state/``; a rerun loads finished units and runs only the rest.
Each unit's generator is seeded by (seed, chunk, attack), so a resumed run reproduces an
uninterrupted one exactly; a unit cut off halfway is run again from its start.

After a chunk's attacks, each image's winning adversarial is classified once more
(``verify``: not charged to any attack's budget), and with the model in hand the
white-box reference distance is computed (``reference``), starting both from the clean
images and from the suite's winning adversarials.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from attacks.access.budgeted import BudgetedModel
from attacks.access.label_only import LabelOnlyModel
from attacks.methods.base import Attack
from avc_common.atomic import atomic_open
from avc_common.images import ModelSpec, to_unit


class Reference(Protocol):
    """A white-box minimal-norm attack: verified L2 per image of uint8 ``images`` with true ``labels``, also trying
    from ``starts`` (uint8, each image's best known adversarial, or the clean image where there is none)."""

    def __call__(self, images: np.ndarray, labels: np.ndarray, *, starts: np.ndarray) -> np.ndarray: ...


def worst_case_l2(images: np.ndarray) -> np.ndarray:
    """Per image, the L2 to the farthest image in [0, 1]^d: no perturbation can be larger (the unfooled score)."""
    x = to_unit(images).reshape(len(images), -1).astype(np.float64)
    return np.sqrt((np.maximum(x, 1 - x) ** 2).sum(axis=1))


def scored(distances: np.ndarray, worst: np.ndarray) -> np.ndarray:
    """The scoring rule per image: the verified distance (0 if misclassified), or ``worst`` where none was found."""
    return np.where(np.isfinite(distances), distances, worst)


class CountingModel:
    """``model`` that counts calls and images and advances a progress bar by the images it was asked about."""

    def __init__(self, model: LabelOnlyModel, bar: tqdm) -> None:
        self.model = model
        self.info: ModelSpec = model.info
        self.bar = bar
        self.queries = 0
        self.calls = 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        labels = self.model(images)
        self.calls += 1
        self.queries += len(images)
        self.bar.update(len(images))
        return labels


@dataclass
class AttackResult:
    """One attack on one chunk: per image its verified L2 (0 misclassified, inf unfooled), queries and adversarial."""

    distances: np.ndarray
    queries: np.ndarray
    best: np.ndarray
    seconds: float
    calls: int


@dataclass
class ChunkResult:
    """Everything known about one chunk: each attack's result, the re-verified labels, the reference distances."""

    start: int
    attacks: list[AttackResult]
    verified_labels: np.ndarray  # the model's label for each image's winning adversarial (-1: none)
    reference: np.ndarray | None


class SuiteRun:
    """``attacks`` (name -> attack, in suite order) on ``images``/``labels`` of ``model``; state in ``state_dir``."""

    def __init__(self, model: LabelOnlyModel, images: np.ndarray, labels: np.ndarray, attacks: dict[str, Attack],
                 state_dir: Path, budget: int = 1000, pooled: bool = False, seed: int = 0, batch_images: int = 100,
                 reference: Reference | None = None, progress: bool = True) -> None:
        self.model = model
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.attacks = attacks
        self.state_dir = Path(state_dir)
        self.budget = budget
        self.pooled = pooled
        self.seed = seed
        self.batch_images = batch_images
        self.reference = reference
        self.progress = progress
        self.chunks: list[ChunkResult] = []

    def run(self, on_chunk: Callable[[list[ChunkResult]], None]) -> list[ChunkResult]:
        """Score every chunk in order, calling ``on_chunk`` with all chunks so far after each one."""
        n = len(self.images)
        worst = worst_case_l2(self.images)
        with tqdm(total=self.budget * len(self.attacks) * n, desc="score", unit="q", disable=not self.progress,
                  dynamic_ncols=True) as bar:
            counter = CountingModel(self.model, bar)
            for chunk, start in enumerate(range(0, n, self.batch_images)):
                rows = slice(start, start + self.batch_images)
                self.chunks.append(self._chunk(counter, chunk, start, self.images[rows], self.labels[rows], bar))
                best = collect(self.chunks, list(self.attacks)).best
                bar.set_postfix(median=f"{np.median(scored(best, worst[:len(best)])):.4f}", refresh=False)
                on_chunk(self.chunks)
        return self.chunks

    def _chunk(self, counter: CountingModel, chunk: int, start: int, images: np.ndarray, labels: np.ndarray,
               bar: tqdm) -> ChunkResult:
        results = []
        for index, (name, attack) in enumerate(self.attacks.items()):
            bar.set_description(f"chunk {chunk + 1} {name}")
            path = self.state_dir / f"c{chunk:04d}-a{index:02d}.npz"
            before = bar.n
            if path.exists():
                result = self._load_attack(path, images, labels)
            else:
                rng = np.random.default_rng([self.seed, chunk, index])
                result = self._run_attack(counter, name, attack, images, labels, rng, path)
            bar.update(max(before + self.budget * len(images) - bar.n, 0))  # what the unit did not spend
            results.append(result)
        bar.set_description(f"chunk {chunk + 1} verify")
        distances = np.array([a.distances for a in results])
        found, winners = np.isfinite(distances.min(axis=0)), winning(distances, np.stack([a.best for a in results]))
        verified = self._unit(self.state_dir / f"c{chunk:04d}-verify.npz", lambda: self._verify(found, winners))
        reference = None
        if self.reference is not None:
            bar.set_description(f"chunk {chunk + 1} reference")
            reference = self._unit(self.state_dir / f"c{chunk:04d}-reference.npz",
                                   lambda: self.reference(images, labels, starts=winners))
        return ChunkResult(start, results, verified, reference)

    def _run_attack(self, model: CountingModel, name: str, attack: Attack, images: np.ndarray, labels: np.ndarray,
                    rng: np.random.Generator, path: Path) -> AttackResult:
        ledger = BudgetedModel(model, images, labels, budget=self.budget, pooled=self.pooled)
        calls, began = model.calls, time.perf_counter()
        with ledger.tagged(name):
            attack.run(ledger, np.arange(len(images)), rng)
        seconds, calls = time.perf_counter() - began, model.calls - calls
        with atomic_open(path, "wb") as f:
            np.savez(f, **ledger.state(), seconds=np.float64(seconds), calls=np.int64(calls))
        return AttackResult(ledger.best_l2, ledger.used, ledger.best, seconds, calls)

    def _load_attack(self, path: Path, images: np.ndarray, labels: np.ndarray) -> AttackResult:
        ledger = BudgetedModel(self.model, images, labels, budget=self.budget, pooled=self.pooled)
        with np.load(path, allow_pickle=False) as saved:
            state = dict(saved)
        ledger.load_state(state)
        return AttackResult(ledger.best_l2, ledger.used, ledger.best, float(state["seconds"]), int(state["calls"]))

    def _verify(self, found: np.ndarray, winners: np.ndarray) -> np.ndarray:
        """Classify each image's winning adversarial again (uint8, as the model saw it); -1 where there is none."""
        labels = np.full(len(winners), -1, dtype=np.int64)
        if found.any():
            labels[found] = self.model(winners[found])
        return labels

    @staticmethod
    def _unit(path: Path, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """One array per chunk computed once and kept at ``path`` (verification labels, reference distances)."""
        if path.exists():
            with np.load(path, allow_pickle=False) as saved:
                return saved["value"]
        value = compute()
        with atomic_open(path, "wb") as f:
            np.savez(f, value=value)
        return value


def winning(distances: np.ndarray, best: np.ndarray) -> np.ndarray:
    """Each image's closest adversarial over the attacks (``distances`` A x n, ``best`` A x n x H x W x C uint8);
    the clean image where none fooled it, since an attack's ``best`` starts as the clean image."""
    return best[distances.argmin(axis=0), np.arange(distances.shape[1])]


@dataclass
class Scores:
    """The chunks done so far as per-image arrays in evaluation-set order (``n`` images, ``A`` attacks)."""

    names: list[str]
    distances: np.ndarray  # A x n: verified L2 per attack (0 misclassified, inf unfooled)
    queries: np.ndarray  # A x n
    seconds: np.ndarray  # A: wall time per attack, summed over chunks
    calls: np.ndarray  # A: model calls per attack
    verified_labels: np.ndarray  # n: the model's label for the winning adversarial (-1: none)
    adversarials: np.ndarray  # n x H x W x C uint8: the winning adversarial (the clean image where none)
    reference: np.ndarray | None  # n: white-box reference distance

    @property
    def best(self) -> np.ndarray:
        """Each image's minimum over attacks (0 misclassified, inf unfooled)."""
        return self.distances.min(axis=0)

    @property
    def winner(self) -> np.ndarray:
        """Index of the attack that found each image's minimum (the first on ties; -1 if none fooled it)."""
        return np.where(np.isfinite(self.best), self.distances.argmin(axis=0), -1)


def collect(chunks: list[ChunkResult], names: list[str]) -> Scores:
    """Concatenate chunk results into :class:`Scores`."""
    distances = np.concatenate([[a.distances for a in c.attacks] for c in chunks], axis=1)
    best = np.concatenate([[a.best for a in c.attacks] for c in chunks], axis=1)
    reference = np.concatenate([c.reference for c in chunks]) if chunks[0].reference is not None else None
    return Scores(names=list(names), distances=distances,
                  queries=np.concatenate([[a.queries for a in c.attacks] for c in chunks], axis=1),
                  seconds=np.sum([[a.seconds for a in c.attacks] for c in chunks], axis=0),
                  calls=np.sum([[a.calls for a in c.attacks] for c in chunks], axis=0),
                  verified_labels=np.concatenate([c.verified_labels for c in chunks]),
                  adversarials=winning(distances, best), reference=reference)
