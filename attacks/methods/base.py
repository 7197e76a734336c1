"""The one interface every attack shares: ``attack.run(model, ids, rng)``.

An attack is a frozen dataclass (its fields are its hyperparameters, so ``repr`` shows
them). It asks the :class:`BudgetedModel` about images by id and returns nothing: the
model keeps each image's best verified adversarial, so a suite is just a list of attacks
run one after another on the same model, each starting from the best so far.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from attacks.access.budgeted import BudgetedModel


@dataclass(frozen=True)
class Attack(ABC):
    """``max_queries``: the most this attack may spend per image (None: whatever the model's budget allows)."""

    max_queries: int | None = None

    def __post_init__(self) -> None:
        """Check the hyperparameters; a subclass that adds checks calls ``super().__post_init__()`` too, so that
        mixed-in parts (:class:`attacks.methods.surrogate_prior.SurrogatePriors`) get theirs."""
        if self.max_queries is not None and self.max_queries < 1:
            raise ValueError(f"max_queries must be at least 1 (or None: the model's budget), got {self.max_queries}")

    def run(self, model: BudgetedModel, ids: np.ndarray, rng: np.random.Generator) -> None:
        """Attack images ``ids``; the clean check comes first and misclassified images are skipped."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        model.check_clean(ids)
        ids = ids[model.best_l2[ids] > 0]
        if len(ids):
            with model.capped(self.max_queries):
                self._run(model, ids, rng)

    @abstractmethod
    def _run(self, model: BudgetedModel, ids: np.ndarray, rng: np.random.Generator) -> None:
        """Attack correctly classified images ``ids`` (unique) within ``model.remaining``."""


def with_starts(model: BudgetedModel, ids: np.ndarray, rng: np.random.Generator,
                init: tuple[Attack, ...]) -> np.ndarray:
    """The ids that have an adversarial to start from, after running the ``init`` attacks in turn on those without."""
    for attack in init:
        missing = ids[~np.isfinite(model.best_l2[ids])]
        if len(missing):
            attack.run(model, missing, rng)
    return ids[np.isfinite(model.best_l2[ids])]
