"""The server's cumulative counters as one JSON object: what ``serve --stats-file`` writes for tools.

Tools that need the server's own figures (bench/real_shape.py counts a run's images with them)
read this file or the server's Prometheus metrics (``--metrics-port``: the same counters and more,
:mod:`defense.metrics`), not the log: the log's wording is for people and may change, the fields
below are the interface. The server writes the file atomically (a reader never sees half of it):
once just before it reports SERVING, every :data:`INTERVAL_S` while there is traffic, once
more after it has drained at shutdown, and whenever it receives SIGUSR1. A tool that needs
exact counts (every call answered before a moment) sends SIGUSR1 and waits for a snapshot
whose ``snapshot_requests`` has grown: :func:`fresh`.
"""
from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass, fields, replace

from avc_common.atomic import atomic_write_text

INTERVAL_S = 1.0  # a reader that wants every call counted waits a little longer than this after the last one


@dataclass(frozen=True)
class ServerStats:
    """Counters since the server reported SERVING (its warm-up forward is not counted); the JSON's keys.

    - ``requests``: Predict calls answered with labels; ``images``: the images in them;
    - ``errors``: Predict calls refused by the server (malformed, over the budget) or failed in the model
      (a message over the size limit is refused by gRPC before it reaches the server and is not counted here;
      the metrics count it as a call started and never handled);
    - ``unparsable``: bodies, to any method, that were not a protobuf of its request (INVALID_ARGUMENT; not in
      ``errors``);
    - ``busy``: Predict calls refused with RESOURCE_EXHAUSTED because the server was full (``--max-concurrent-calls``,
      ``--max-queued-images``), not charged to a query budget; ``draining``: Predict calls refused with UNAVAILABLE
      because the server was shutting down;
    - ``dropped``: Predict calls whose caller left (cancelled, or its deadline passed) while their images were
      still queued; ``dropped_images``: those images, never computed and not charged to a query budget;
    - ``batches``: model forwards; ``batch_images``: the images in them (``images`` plus those of calls still
      in flight or failed); ``largest_batch``: the most images in one forward;
    - ``model_s``: seconds inside the model forwards, summed over batches;
    - ``answer_s``: seconds inside the server for the answered calls, from Predict's entry to its return,
      summed; ``answer_s / requests`` is the server's part of a call's latency, the rest is gRPC transport
      and the client;
    - ``uptime_s``: seconds since the server started listening, at the moment of the snapshot;
    - ``snapshot_requests``: SIGUSR1 signals the server had received when it took this snapshot.
    """

    requests: int = 0
    images: int = 0
    errors: int = 0
    unparsable: int = 0
    busy: int = 0
    draining: int = 0
    dropped: int = 0
    dropped_images: int = 0
    batches: int = 0
    batch_images: int = 0
    largest_batch: int = 0
    model_s: float = 0.0
    answer_s: float = 0.0
    uptime_s: float = 0.0
    snapshot_requests: int = 0

    def since(self, earlier: ServerStats) -> ServerStats:
        """The traffic between ``earlier`` and this snapshot: each counter's difference (``largest_batch`` is a
        running maximum and stays this snapshot's; ``uptime_s`` becomes the seconds between the two)."""
        return replace(self, **{f.name: getattr(self, f.name) - getattr(earlier, f.name)
                                for f in fields(self) if f.name not in ("largest_batch", "snapshot_requests")})

    def write(self, path: str | os.PathLike) -> None:
        """Write the snapshot to ``path`` atomically, as one JSON object."""
        atomic_write_text(path, json.dumps(asdict(self)) + "\n")

    @classmethod
    def read(cls, path: str | os.PathLike) -> ServerStats:
        """The snapshot in ``path``; keys it does not know are ignored (a newer server may add some), missing ones
        are 0 (an older server wrote it)."""
        with open(path) as f:
            data = json.load(f)
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def fresh(path: str | os.PathLike, pid: int, timeout_s: float = 30.0) -> ServerStats:
    """The counters of the server process ``pid`` now, counting every call it answered before this call:
    asks for a snapshot with SIGUSR1 and waits (up to ``timeout_s``) for one taken after the signal."""
    asked = ServerStats.read(path).snapshot_requests
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout_s
    while (stats := ServerStats.read(path)).snapshot_requests <= asked:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no snapshot in {path} {timeout_s:.0f} s after SIGUSR1 to process {pid}")
        time.sleep(0.005)
    return stats
