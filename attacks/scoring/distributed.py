"""Scoring on Ray: the units of a score (one attack on one chunk) run on a pool of Ray actors, one unit at a time each.

Each worker builds its model (a client of the replica pool, or the artifact on its device) and the suite, with the
surrogates loaded on its device, once, in its constructor, and then runs every unit it is given exactly as a thread
of a single-process run would (:func:`attacks.scoring.pipeline.run_unit`: the same ledger, and the generator seeded
by (seed, chunk, attack index)), so the per-image results do not depend on where a unit ran. It returns the unit's
state arrays to the driver, which saves them under ``state/`` and verifies, references and reports the chunks in
order itself (:class:`attacks.scoring.pipeline.SuiteRun` with a runner): the output folder is the same, and a
killed run resumes from the driver, without redoing the units it saved.

Actors, not tasks, because a worker's setup (torch, the model, the surrogates, a gRPC channel with its connections
to every replica) costs far more than a unit on a small model. A worker that dies is restarted once and its unit
run again from its start (a unit is a pure function of its inputs). Imported only with ``--ray`` or
``--ray-address``: the default install has no Ray.
"""
from __future__ import annotations

import copyreg
import logging
import os
import queue
import socket
from collections.abc import Callable
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import RayTaskError

from attacks.access.label_only import LabelOnlyModel
from attacks.methods.base import Attack
from attacks.scoring.pipeline import RunControl, Stopped, Unit, run_unit
from attacks.whitebox.surrogate import _load_surrogate
from avc_common.rpc.client import DefenseError

CPUS_PER_WORKER = 1  # one torch thread each: a worker is a unit at a time, and Ray places one per CPU
READY_S = 300.0  # how long workers may take to start (import torch, load the model and the surrogates)
POLL_S = 0.2  # how often a waiting driver thread looks at the run's stop event

Setup = Callable[[], tuple[LabelOnlyModel, dict[str, Attack]]]


class WorkersError(RuntimeError):
    """The Ray cluster cannot run the score's workers; the message names the flag and what to change."""


def _rebuilt(cls: type[BaseException], args: tuple, state: dict[str, Any]) -> BaseException:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


def _by_fields(error: BaseException) -> tuple[Callable[..., BaseException], tuple]:
    return _rebuilt, (type(error), error.args, dict(vars(error)))


def _with_subclasses(cls: type) -> list[type]:
    return [cls, *(sub for child in cls.__subclasses__() for sub in _with_subclasses(child))]


# The client's errors take (code, details, ...) but keep only their message in ``args``, so pickle could not make
# them again; a worker's error reaches the driver whole (its class, message and fields), for the exit code and
# message a single-process run would give.
for _error in _with_subclasses(DefenseError):
    copyreg.pickle(_error, _by_fields)


class _Worker:
    """One Ray actor: ``setup()`` once, then units on demand. A setup error is kept and raised by :meth:`describe`,
    where it reaches the driver as itself (an actor whose constructor fails reaches it only as a dead actor)."""

    def __init__(self, setup: Setup) -> None:
        torch.set_num_threads(CPUS_PER_WORKER)
        self._failure: Exception | None = None
        try:
            self.model, self.suite = setup()
        except Exception as err:
            self._failure = err

    def describe(self) -> dict[str, Any]:
        """Where this worker runs, the suite it built (name -> settings) and how many surrogates it has loaded."""
        if self._failure is not None:
            raise self._failure
        return {"host": socket.gethostname(), "pid": os.getpid(),
                "attacks": {name: repr(attack) for name, attack in self.suite.items()},
                "surrogate_loads": _load_surrogate.cache_info().misses}

    def unit(self, unit: Unit) -> dict[str, np.ndarray]:
        return run_unit(self.model, self.suite[unit.name], unit)[0]


ScoringWorker = ray.remote(_Worker)


def _get(ref: ray.ObjectRef) -> Any:
    """``ray.get``, with a worker's error raised as itself (not wrapped in Ray's, whose message is a traceback)."""
    try:
        return ray.get(ref)
    except RayTaskError as err:
        if isinstance(err.cause, Exception):
            raise err.cause from None
        raise


class RayWorkers:
    """Started workers as a :class:`attacks.scoring.pipeline.UnitRunner`: each call runs its unit on an idle one."""

    def __init__(self, actors: list[Any], described: list[dict[str, Any]], owns_ray: bool) -> None:
        self.actors = actors
        self.described = described
        self.workers = len(actors)
        self._owns_ray = owns_ray
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for actor in actors:
            self._idle.put(actor)

    def __call__(self, unit: Unit, control: RunControl) -> dict[str, np.ndarray]:
        actor = self._idle.get()  # never waits: the run has one thread per worker
        try:
            ref = actor.unit.remote(unit)
            while not ray.wait([ref], timeout=POLL_S)[0]:
                if control.stop.is_set():
                    ray.cancel(ref)
                    raise Stopped(f"chunk {unit.chunk + 1} {unit.name}: the run was stopped")
            return _get(ref)
        finally:
            self._idle.put(actor)

    def hosts(self) -> list[str]:
        return sorted({d["host"] for d in self.described})

    def close(self) -> None:
        """Stop the workers (units still running on them are dropped: they were not saved), and Ray if started here."""
        for actor in self.actors:
            ray.kill(actor)
        if self._owns_ray:
            ray.shutdown()


def start(setup: Setup, suite: dict[str, str], address: str | None = None, workers: int | None = None,
          gpus: bool = False) -> RayWorkers:
    """``workers`` (default: one per CPU of the cluster) Ray workers, each built by ``setup``, checked to build
    ``suite`` (name -> settings, as this process did), and started before this returns.

    Connects to the cluster at ``address`` (``None``: a cluster of this machine, started here and stopped by
    :meth:`RayWorkers.close`), unless this process is connected to one already. With ``gpus`` each worker gets an
    equal share of the cluster's GPUs. Workers that cannot start within :data:`READY_S` (the cluster has fewer free
    CPUs than workers) are left out; none at all is a :class:`WorkersError`.
    """
    owns_ray = not ray.is_initialized()
    if owns_ray:
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        except ConnectionError as err:
            raise WorkersError(f"--ray-address {address}: cannot connect to a Ray cluster there ({err})") from None
    actors: list[Any] = []
    try:
        resources = ray.cluster_resources()
        count = workers or max(int(resources.get("CPU", 0)) // CPUS_PER_WORKER, 1)
        if gpus and not resources.get("GPU"):
            raise WorkersError("--device cuda: the Ray cluster has no GPU; use --device cpu, or a cluster with GPUs")
        options = {"num_cpus": CPUS_PER_WORKER, "num_gpus": min(1.0, resources["GPU"] / count) if gpus else 0,
                   "max_restarts": 1, "max_task_retries": 1}
        actors = [ScoringWorker.options(**options).remote(setup) for _ in range(count)]
        refs = [actor.describe.remote() for actor in actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=READY_S)
        if not ready:
            raise WorkersError(f"--workers {count}: no Ray worker started within {READY_S:.0f} s (the cluster has "
                               f"{resources.get('CPU', 0):g} CPUs; each worker takes {CPUS_PER_WORKER})")
        late = [actor for actor, ref in zip(actors, refs) if ref not in ready]
        for actor in late:
            ray.kill(actor)
        actors = [actor for actor, ref in zip(actors, refs) if ref in ready]
        described = [_get(ref) for ref in refs if ref in ready]
        for worker in described:
            if worker["attacks"] != suite:
                raise WorkersError(f"--ray: the worker on {worker['host']} builds another suite than this process "
                                   f"({worker['attacks']}); install the same trades-avc on every node")
        return RayWorkers(actors, described, owns_ray)
    except BaseException:
        for actor in actors:
            ray.kill(actor)
        if owns_ray:
            ray.shutdown()
        raise
