"""A query budget, counted in images classified: the server's one shared budget, or a named caller's own
(``defense/callers.py``).

A request the remaining budget cannot cover is refused whole and nothing is counted,
so a client near the end of its budget can retry with fewer images.
"""
from __future__ import annotations

import threading

import grpc

from defense.validation import RequestError


class QueryBudget:
    """``total`` images over the server's lifetime; ``total == 0`` means unlimited."""

    def __init__(self, total: int) -> None:
        if total < 0:
            raise ValueError(f"query budget must be >= 0 (0 = unlimited), got {total}")
        self.total = total
        self._used = 0
        self._lock = threading.Lock()

    @property
    def remaining(self) -> int:
        """Images left, or -1 when there is no budget (the ModelInfo convention)."""
        return self.total - self._used if self.total else -1

    def spend(self, images: int) -> None:
        """Count ``images``, or raise RESOURCE_EXHAUSTED and count nothing if they do not all fit."""
        with self._lock:
            if self.total and self._used + images > self.total:
                raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"query budget: {images} images requested, {self.total - self._used} "
                                   f"of {self.total} left; the whole request was refused and not counted")
            self._used += images

    def refund(self, images: int) -> None:
        """Give back ``images`` that were counted but will never be classified (their caller left first)."""
        with self._lock:
            self._used = max(self._used - images, 0)
