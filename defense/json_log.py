"""``serve --log-format json``: one JSON object per log line, for log collectors that index fields.

The text format is for people and its wording may change; a JSON line has fixed keys: ``time``
(UTC, ISO 8601 with milliseconds), ``level``, ``logger`` and ``message`` (the formatted text),
plus every field the call passed with ``extra=`` (the throughput line's ``interval``: the counters
of the last interval, as in :class:`defense.stats.ServerStats`) and, for a logged exception,
``exception`` (its traceback). Standard library only, so it costs the server image nothing.
"""
from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

# what every LogRecord carries; anything else on a record came from ``extra=``
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON (keys: module docstring); values JSON cannot hold are written as ``str``."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        line.update({key: value for key, value in vars(record).items() if key not in _STANDARD})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)
