"""Per-image query ledger and best-adversarial record around a :class:`LabelOnlyModel`.

Every query is charged to the evaluation image it is about, so an attack cannot spend
one image's budget on another, and every answer is checked on the spot: a misclassified
uint8 image closer to its clean image than the current best becomes that image's best.
The reported adversarial is therefore verified after rounding by construction, and an
attack's only job is to ask good questions.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from attacks.access.label_only import LabelOnlyModel
from attacks.access.lattice import l2
from avc_common.images import to_uint8, to_unit


class BudgetExceeded(RuntimeError):
    """A query would take an image (or the pool) past its budget; nothing was sent."""


@dataclass
class TagStats:
    """What one tagged part of the run (usually one attack) spent and found, per image."""

    used: np.ndarray
    best_l2: np.ndarray


class BudgetedModel:
    """``model`` restricted to the evaluation set ``images`` (uint8 N x H x W x C) with true ``labels``.

    Attacks address images by id (row index). ``budget`` is per image, or with ``pooled``
    the pool is ``budget * N`` spent wherever attacks ask. ``best``/``best_l2`` hold each
    image's smallest-L2 verified adversarial (``inf`` while none); a misclassified clean
    image has distance 0.
    """

    def __init__(self, model: LabelOnlyModel, images: np.ndarray, labels: np.ndarray,
                 budget: int = 1000, pooled: bool = False) -> None:
        images = np.asarray(images)
        model.info.shape.check(images)
        if len(labels) != len(images):
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
        self.model = model
        self.info = model.info  # the model's shape and classes, for attacks that need them
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.budget = int(budget)
        self.pooled = pooled
        n = len(images)
        self.used = np.zeros(n, dtype=np.int64)
        self.checked = np.zeros(n, dtype=bool)
        self.best = images.copy()
        self.best_l2 = np.full(n, np.inf)
        self.best_tag = np.full(n, "", dtype=object)
        self.tag = ""
        self.stats: dict[str, TagStats] = {}
        self._caps: list[tuple[np.ndarray, int]] = []

    @property
    def dim(self) -> int:
        """Values per image (H * W * C)."""
        return int(np.prod(self.images.shape[1:]))

    def remaining(self, ids: np.ndarray) -> np.ndarray:
        """Queries each image in ``ids`` may still spend; in pooled mode, a fair share of the pool among ``ids``."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.pooled:
            left = self.budget * len(self.images) - int(self.used.sum())
            rest = np.full(len(ids), max(left, 0) // max(len(np.unique(ids)), 1), dtype=np.int64)
        else:
            rest = self.budget - self.used[ids]
        for base, limit in self._caps:
            rest = np.minimum(rest, limit - (self.used[ids] - base[ids]))
        return np.maximum(rest, 0)

    def is_adversarial(self, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Query ``x`` (float [0, 1] or uint8, one row per entry of ``ids``) and record any new best.

        Raises :class:`BudgetExceeded`, before sending anything, if a row would overspend.
        """
        ids = np.asarray(ids, dtype=np.int64)
        images = to_uint8(np.asarray(x)).reshape((len(ids),) + self.images.shape[1:])
        need = np.bincount(ids, minlength=len(self.images))
        self._charge(need)
        labels = self.model(images)
        self.used += need
        stats = self._tag_stats()
        stats.used += need
        adv = labels != self.labels[ids]
        self._record(images[adv], ids[adv], stats)
        return adv

    def check_clean(self, ids: np.ndarray) -> None:
        """Query the clean images not yet checked (one query each); a misclassified one gets distance 0."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        todo = ids[~self.checked[ids]]
        if len(todo):
            self.is_adversarial(self.images[todo], todo)
            self.checked[todo] = True

    def clean(self, ids: np.ndarray) -> np.ndarray:
        """Clean images as float32 rows (n x H*W*C) in [0, 1]."""
        return to_unit(self.images[ids]).reshape(len(ids), self.dim)

    def starts(self, ids: np.ndarray) -> np.ndarray:
        """Best adversarials so far as float32 rows (the clean image where there is none)."""
        return to_unit(self.best[ids]).reshape(len(ids), self.dim)

    def state(self) -> dict[str, np.ndarray]:
        """The ledger as named arrays (for ``np.savez``), so a resumed run neither re-spends nor forgets a best."""
        out = {"used": self.used.copy(), "checked": self.checked.copy(), "best": self.best.copy(),
               "best_l2": self.best_l2.copy(), "best_tag": self.best_tag.astype(str),
               "tags": np.array(list(self.stats), dtype=str)}
        for i, stats in enumerate(self.stats.values()):
            out[f"tag{i}_used"], out[f"tag{i}_best_l2"] = stats.used.copy(), stats.best_l2.copy()
        return out

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Continue from :meth:`state` of a run on the same images and labels."""
        if state["best"].shape != self.images.shape:
            raise ValueError(f"saved state is for images {state['best'].shape}, not {self.images.shape}")
        self.used, self.checked = state["used"].astype(np.int64), state["checked"].astype(bool)
        self.best, self.best_l2 = state["best"].astype(np.uint8), state["best_l2"].astype(np.float64)
        self.best_tag = state["best_tag"].astype(object)
        self.stats = {str(tag): TagStats(state[f"tag{i}_used"].astype(np.int64),
                                         state[f"tag{i}_best_l2"].astype(np.float64))
                      for i, tag in enumerate(state["tags"])}

    def adopt(self, best: np.ndarray, best_l2: np.ndarray) -> None:
        """Start from adversarials found before (a chained suite: the attacks ahead of this one on the same images,
        which also checked every clean image): attacks continue from them, and only closer ones are recorded."""
        if best.shape != self.images.shape or best_l2.shape != (len(self.images),):
            raise ValueError(f"adopted adversarials {best.shape} / distances {best_l2.shape} do not fit images "
                             f"{self.images.shape}")
        self.best, self.best_l2 = best.astype(np.uint8), best_l2.astype(np.float64)
        self.checked[:] = True

    @contextmanager
    def capped(self, limit: int | None) -> Iterator[BudgetedModel]:
        """Within the block, each image may spend at most ``limit`` more queries (None: no extra cap)."""
        if limit is None:
            yield self
            return
        self._caps.append((self.used.copy(), int(limit)))
        try:
            yield self
        finally:
            self._caps.pop()

    @contextmanager
    def tagged(self, tag: str) -> Iterator[BudgetedModel]:
        """Charge the block's queries and adversarials to ``tag`` in :attr:`stats` (and :attr:`best_tag`)."""
        previous, self.tag = self.tag, tag
        try:
            yield self
        finally:
            self.tag = previous

    def _charge(self, need: np.ndarray) -> None:
        rows = np.flatnonzero(need)
        if self.pooled:
            left = self.budget * len(self.images) - int(self.used.sum())
            if need.sum() > left:
                raise BudgetExceeded(f"{need.sum()} queries asked, {left} left in the pool")
        elif (over := rows[self.used[rows] + need[rows] > self.budget]).size:
            raise BudgetExceeded(f"image(s) {over[:5].tolist()} would exceed the budget of {self.budget}")
        for base, limit in self._caps:
            if (over := rows[self.used[rows] - base[rows] + need[rows] > limit]).size:
                raise BudgetExceeded(f"image(s) {over[:5].tolist()} would exceed this attack's cap of {limit}")

    def _tag_stats(self) -> TagStats:
        if self.tag not in self.stats:
            n = len(self.images)
            self.stats[self.tag] = TagStats(np.zeros(n, dtype=np.int64), np.full(n, np.inf))
        return self.stats[self.tag]

    def _record(self, images: np.ndarray, ids: np.ndarray, stats: TagStats) -> None:
        """Keep, per image, the closest misclassified image among ``images`` if it beats the current best."""
        if not len(ids):
            return
        dist = l2(to_unit(images), to_unit(self.images[ids]))
        order = np.lexsort((dist, ids))
        first = order[np.r_[True, ids[order][1:] != ids[order][:-1]]]
        cand_ids, cand_dist = ids[first], dist[first]
        np.minimum.at(stats.best_l2, cand_ids, cand_dist)
        better = cand_dist < self.best_l2[cand_ids]
        won = cand_ids[better]
        self.best[won] = images[first[better]]
        self.best_l2[won] = cand_dist[better]
        self.best_tag[won] = self.tag
