"""Run a suite of attacks over an evaluation set in chunks, resumably, and collect each image's distances.

The unit of work is one attack on one chunk of ``batch_images`` images, on a fresh
:class:`BudgetedModel`: every attack gets the whole per-image budget (or pool), as each
attack did in the competition, and an image's score is the minimum over attacks
(docs/scoring.md). With ``chain``, each attack of a chunk also starts from the closest
adversarials of the attacks before it (:meth:`BudgetedModel.adopt`), so later attacks refine
earlier ones' points instead of starting over: the same queries, a stronger suite, and an
attack's distances are then the best after it. When a unit finishes, its ledger
(:meth:`BudgetedModel.state`) is saved atomically under ``state/``; a rerun loads finished
units and runs only the rest. Each unit's generator is seeded by (seed, chunk, attack), so a
resumed run reproduces an uninterrupted one exactly; a unit cut off halfway is run again from
its start.

After a chunk's attacks, each image's winning adversarial is classified once more
(``verify``: not charged to any attack's budget), and with the model in hand the
white-box reference distance is computed (``reference``), starting both from the clean
images and from the suite's winning adversarials.

Units run ``concurrency`` at a time in worker threads, started in the order above (every
attack of chunk 0, then chunk 1, ...; chained, one thread per chunk runs its attacks in turn),
so that several requests are in flight and a server's batches fill; chunks are verified,
referenced and reported strictly in order in the calling thread. A worker thread runs its
unit itself (:func:`run_unit`), or hands it to a :class:`UnitRunner` that runs it elsewhere
(:mod:`attacks.scoring.distributed`: Ray workers) and returns the same state; saving,
resuming and everything after the attacks stay here.
Each unit has its own ledger, generator and call counter, so its results do not
depend on what runs beside it. If a unit fails or the caller is interrupted, the run's stop
event makes every other unit raise :class:`Stopped` at its next model call, units not yet
started are cancelled, and the first error is raised once no worker is left.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
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


class Stopped(Exception):
    """A unit ended at a model call because its run was stopped (another unit failed, or an interrupt); unsaved."""


@dataclass
class RunControl:
    """What the units of one run share: the progress bar (behind ``lock``), the stop event and the first error."""

    bar: tqdm
    stop: threading.Event
    lock: threading.Lock = field(default_factory=threading.Lock)
    error: BaseException | None = None

    def advance(self, images: int) -> None:
        with self.lock:
            self.bar.update(images)

    def describe(self, what: str) -> None:
        with self.lock:
            self.bar.set_description(what)

    def guard(self, work: Callable[..., list[AttackResult]], *args: object) -> list[AttackResult]:
        """``work(*args)`` in a worker thread; any failure but :class:`Stopped` becomes the run's error and stops it."""
        try:
            return work(*args)
        except Stopped:
            raise
        except BaseException as err:
            with self.lock:
                self.error = self.error or err
            self.stop.set()
            raise

    def result(self, future: Future[list[AttackResult]]) -> list[AttackResult]:
        """The units' results; for units that were stopped, the error that stopped the run."""
        try:
            return future.result()
        except Stopped:
            if self.error is not None:
                raise self.error from None
            raise


class CountingModel:
    """``model`` for one unit (``chunk``, attack ``name``): counts the unit's calls and images; with a ``control``
    (a unit run in this process) it also advances the shared progress bar by the images asked, and once the run's
    stop event is set it raises :class:`Stopped` instead."""

    def __init__(self, model: LabelOnlyModel, control: RunControl | None, chunk: int, name: str) -> None:
        self.model = model
        self.info: ModelSpec = model.info
        self.control = control
        self.chunk = chunk
        self.name = name
        self.queries = 0
        self.calls = 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if self.control is not None and self.control.stop.is_set():
            raise Stopped(f"chunk {self.chunk + 1} {self.name}: the run was stopped")
        labels = self.model(images)
        self.calls += 1
        self.queries += len(images)
        if self.control is not None:
            self.control.advance(len(images))
        return labels


@dataclass(frozen=True)
class Unit:
    """One attack (``index``, ``name`` in the suite) on one chunk: all a worker needs to run it, anywhere, with the
    same result (its generator is seeded by (seed, chunk, attack index) alone)."""

    chunk: int
    index: int
    name: str
    images: np.ndarray
    labels: np.ndarray
    budget: int
    pooled: bool
    seed: int
    start: tuple[np.ndarray, np.ndarray] | None = None  # chained: the attacks before it found these (best, best_l2)

    def rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.chunk, self.index])


def run_unit(model: LabelOnlyModel, attack: Attack, unit: Unit,
             control: RunControl | None = None) -> tuple[dict[str, np.ndarray], int]:
    """``attack`` on ``unit``'s images on a fresh ledger over ``model``: the arrays its state file holds (the
    ledger's :meth:`BudgetedModel.state`, ``seconds`` and model ``calls``) and the images it asked about."""
    counter = CountingModel(model, control, unit.chunk, unit.name)
    ledger = BudgetedModel(counter, unit.images, unit.labels, budget=unit.budget, pooled=unit.pooled)
    if unit.start is not None:
        ledger.adopt(*unit.start)
    began = time.perf_counter()
    with ledger.tagged(unit.name):
        attack.run(ledger, np.arange(len(unit.images)), unit.rng())
    seconds = time.perf_counter() - began
    return {**ledger.state(), "seconds": np.float64(seconds), "calls": np.int64(counter.calls)}, counter.queries


class UnitRunner(Protocol):
    """Runs units away from the calling thread (on Ray workers, say), each exactly as :func:`run_unit` would."""

    workers: int  # how many units it runs at once

    def __call__(self, unit: Unit, control: RunControl) -> dict[str, np.ndarray]:
        """The unit's state arrays; raises :class:`Stopped` soon after ``control.stop`` is set."""
        ...


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
    """``attacks`` (name -> attack, in suite order) on ``images``/``labels`` of ``model``; state in ``state_dir``.

    ``concurrency`` units run at once (``model`` must then take calls from several threads), or with ``runner``
    its ``workers`` do, each with its own model, and ``model`` here only verifies; with ``chain`` each attack starts
    from the best of those before it on its chunk (module docstring); setting :attr:`stop` ends a running :meth:`run`
    at its units' next model calls.
    """

    def __init__(self, model: LabelOnlyModel, images: np.ndarray, labels: np.ndarray, attacks: dict[str, Attack],
                 state_dir: Path, budget: int = 1000, pooled: bool = False, seed: int = 0, batch_images: int = 100,
                 reference: Reference | None = None, progress: bool = True, concurrency: int = 1,
                 runner: UnitRunner | None = None, chain: bool = False) -> None:
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
        self.concurrency = concurrency if runner is None else runner.workers
        self.runner = runner
        self.chain = chain
        self.stop = threading.Event()
        self.chunks: list[ChunkResult] = []

    def run(self, on_chunk: Callable[[list[ChunkResult]], None]) -> list[ChunkResult]:
        """Score every chunk in order, calling ``on_chunk`` with all chunks so far after each one.

        Raises the first error of any unit or of this thread (``KeyboardInterrupt`` included) only after
        every worker has ended; the chunks finished before it stay in :attr:`chunks`.
        """
        n = len(self.images)
        worst = worst_case_l2(self.images)
        starts = range(0, n, self.batch_images)
        with (tqdm(total=self.budget * len(self.attacks) * n, desc="score", unit="q", disable=not self.progress,
                   dynamic_ncols=True) as bar,
              ThreadPoolExecutor(self.concurrency, thread_name_prefix="score-unit") as pool):
            control = RunControl(bar, self.stop)
            try:
                # a future per unit, or chained, one per chunk that runs its attacks in turn
                queues = [range(len(self.attacks))] if self.chain else [[i] for i in range(len(self.attacks))]
                units = [[pool.submit(control.guard, self._attacks, control, chunk, start, queue) for queue in queues]
                         for chunk, start in enumerate(starts)]
                for chunk, (start, futures) in enumerate(zip(starts, units, strict=True)):
                    results = [result for future in futures for result in control.result(future)]
                    self.chunks.append(self._chunk(control, chunk, start, results))
                    best = collect(self.chunks, list(self.attacks)).best
                    with control.lock:
                        bar.set_postfix(median=f"{np.median(scored(best, worst[:len(best)])):.4f}", refresh=False)
                    on_chunk(self.chunks)
            except BaseException:
                self.stop.set()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return self.chunks

    def _attacks(self, control: RunControl, chunk: int, start: int, indices: Sequence[int]) -> list[AttackResult]:
        """The attacks ``indices`` of the suite on one chunk, in turn, in a worker thread; chained, each from the
        results of the one before."""
        results: list[AttackResult] = []
        for index in indices:
            after = results[-1] if self.chain and results else None
            results.append(self._attack(control, chunk, start, index, after))
        return results

    def _attack(self, control: RunControl, chunk: int, start: int, index: int,
                after: AttackResult | None) -> AttackResult:
        """One unit: its saved state, or the attack run (here or by the runner; from ``after``'s adversarials when
        given) and saved."""
        rows = slice(start, start + self.batch_images)
        name = list(self.attacks)[index]
        unit = Unit(chunk, index, name, self.images[rows], self.labels[rows], self.budget, self.pooled, self.seed,
                    None if after is None else (after.best, after.distances))
        path = self.state_dir / f"c{chunk:04d}-a{index:02d}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as saved:
                state, spent = dict(saved), 0
        else:
            control.describe(f"chunk {chunk + 1} {name}")
            if self.runner is None:
                state, spent = run_unit(self.model, self.attacks[name], unit, control)
            else:
                state, spent = self.runner(unit, control), 0
            with atomic_open(path, "wb") as f:
                np.savez(f, **state)
        control.advance(max(self.budget * len(unit.images) - spent, 0))  # what the unit did not spend here
        ledger = BudgetedModel(self.model, unit.images, unit.labels, budget=self.budget, pooled=self.pooled)
        ledger.load_state(state)  # a unit just run and a resumed one become results the same way
        return AttackResult(ledger.best_l2, ledger.used, ledger.best, float(state["seconds"]), int(state["calls"]))

    def _chunk(self, control: RunControl, chunk: int, start: int, results: list[AttackResult]) -> ChunkResult:
        """The chunk's attacks done: verify each image's winning adversarial and compute the reference."""
        rows = slice(start, start + self.batch_images)
        images, labels = self.images[rows], self.labels[rows]
        control.describe(f"chunk {chunk + 1} verify")
        distances = np.array([a.distances for a in results])
        found, winners = np.isfinite(distances.min(axis=0)), winning(distances, np.stack([a.best for a in results]))
        verified = self._unit(self.state_dir / f"c{chunk:04d}-verify.npz", lambda: self._verify(found, winners))
        reference = None
        if self.reference is not None:
            control.describe(f"chunk {chunk + 1} reference")
            reference = self._unit(self.state_dir / f"c{chunk:04d}-reference.npz",
                                   lambda: self.reference(images, labels, starts=winners))
        return ChunkResult(start, results, verified, reference)

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
    seconds: np.ndarray  # A: wall time per attack, summed over chunks (units overlap with concurrency > 1)
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
