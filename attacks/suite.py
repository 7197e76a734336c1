"""Named attack suites (presets): which attacks a score runs, with their hyperparameters and sources.

A suite is data (STYLE.md, after Foolbox): a tuple of :class:`SuiteEntry`, each an
``ATTACKS`` name, its keyword arguments and the paper it comes from. Each attack of a
suite gets its own per-image budget and the image's score is the minimum over them, so
the best suites combine attacks that win on *different* images.

Attacks that craft on local surrogate models (``transfer``) get the surrogate artifact
folders from :func:`attacks.build_suite`; without any, they are left out with a warning.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SURROGATE_ATTACKS = frozenset({"transfer"})  # ATTACKS names whose ``surrogates`` field build_suite fills


@dataclass(frozen=True)
class SuiteEntry:
    """One attack of a preset: ``name`` in ``ATTACKS``, its hyperparameters, and its source."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def needs_surrogates(self) -> bool:
        return self.name in SURROGATE_ATTACKS


PRESETS: dict[str, tuple[SuiteEntry, ...]] = {}

