"""At most one log line per kind of event per interval, however often it happens, with a count of the rest.

The server logs what clients cause (a body that is not a protobuf, a call refused as busy, a caller that
left): one line tells the operator it happens and from where, but one line *per call* would let any
client fill the disk. The exact numbers are in the counters (``docs/grpc.md`` "Server counters").
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

INTERVAL_S = 10.0


class ThrottledLog:
    """WARNING lines through ``logger``, at most one per ``kind`` every ``interval_s``; not thread-safe (the server
    calls it from its event loop only)."""

    def __init__(self, logger: logging.Logger, interval_s: float = INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def warning(self, kind: str, message: str, *args: object) -> None:
        """Log ``message % args``, or only count it if a ``kind`` line went out less than ``interval_s`` ago; the next
        ``kind`` line that goes out ends with how many were left out before it."""
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval_s:
            self._suppressed[kind] += 1
            return
        self._last[kind] = now
        if left := self._suppressed.pop(kind, 0):
            message, args = f"{message} (%d more suppressed)", (*args, left)
        self._logger.warning(message, *args)
