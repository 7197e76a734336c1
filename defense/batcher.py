"""Dynamic batching: many small concurrent requests become few full model forwards.

One worker thread owns the model, so the forward never runs on the server's event
loop and never runs twice at once. A batch closes when ``max_batch_size`` images are
queued or ``max_delay_ms`` after its oldest request arrived, whichever comes first; a
request larger than a batch is split across consecutive batches. Callers get a
``concurrent.futures.Future`` (``asyncio.wrap_future`` makes it awaitable), resolved
with their own labels in their own order. With ``max_queued_images`` the queue is bounded:
a request that would take it past the cap is refused whole (:class:`QueueFull`), so that a
flood of callers costs a refusal each rather than the server's memory (``defense/limits.py``).
"""
from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from avc_common.tensors import to_model_input

Model = Callable[[torch.Tensor], torch.Tensor]
SMOOTHING = 0.2  # weight of the newest forward in ``seconds_per_image``


def classify(model: Model, images: np.ndarray, device: str | torch.device = "cpu") -> np.ndarray:
    """Labels (int64, N) for uint8 N x H x W x C images: float N x C x H x W in [0, 1], argmax of the logits."""
    with torch.inference_mode():
        return model(to_model_input(images, device)).argmax(dim=1).cpu().numpy()


@dataclass(frozen=True)
class BatchStats:
    """Cumulative counts since start (or the last :meth:`Batcher.reset_stats`); the server reports them."""

    batches: int = 0
    images: int = 0
    largest: int = 0
    model_s: float = 0.0  # wall time inside ``classify``: what the server adds is the rest of a call


class QueueFull(RuntimeError):
    """:meth:`Batcher.submit` refused a request whole: its images would take the queue past ``max_queued_images``."""


class _Pending:
    """One submitted request: its images, how many were already taken into batches, its labels."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images
        self.taken = 0
        self.labels = np.empty(len(images), dtype=np.int64)
        self.future: Future[np.ndarray] = Future()
        self.future.pending = self  # type: ignore[attr-defined]  # for Batcher.abandon
        self.arrived = time.monotonic()


class ForwardObserver(Protocol):
    """Told of each model forward (its images and seconds) and of each :meth:`Batcher.reset_stats`: what keeps
    per-forward figures (the metrics' histograms) beside the batcher's totals, from the same measurement."""

    def forward(self, images: int, seconds: float) -> None: ...

    def reset(self) -> None: ...


class Batcher:
    """Coalesces :meth:`submit` calls from any thread into model batches run by one worker thread.

    A caller that stops waiting calls :meth:`abandon`; a request cancelled through its future is dropped too.
    """

    def __init__(self, model: Model, *, max_batch_size: int = 256, max_delay_ms: float = 2.0,
                 device: str | torch.device = "cpu", max_queued_images: int | None = None,
                 observer: ForwardObserver | None = None) -> None:
        if max_batch_size < 1 or max_delay_ms < 0 or (max_queued_images is not None and max_queued_images < 1):
            raise ValueError(f"need max_batch_size >= 1, max_delay_ms >= 0 and max_queued_images None or >= 1, "
                             f"got {max_batch_size}, {max_delay_ms} and {max_queued_images}")
        self._model = model
        self._device = device
        self.max_batch_size = max_batch_size
        self.max_queued_images = max_queued_images  # None: unbounded
        self._max_delay_s = max_delay_ms / 1000
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_images = 0
        self._closed = False
        self._cond = threading.Condition()
        self.stats = BatchStats()
        self._observer = observer  # told of every forward and every reset_stats, under the lock
        self.seconds_per_image = 0.0  # recent model time per image (moving average over forwards)
        self._worker = threading.Thread(target=self._run, name="batcher", daemon=True)
        self._worker.start()

    def submit(self, images: np.ndarray) -> Future[np.ndarray]:
        """Queue uint8 N x H x W x C images (N >= 1); the future resolves to their int64 labels.

        Raises :class:`QueueFull` (and queues nothing) if they would take the queue past ``max_queued_images``.
        """
        if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
            raise ValueError(f"expected a non-empty uint8 N x H x W x C array, got {images.dtype} {images.shape}")
        pending = _Pending(images)
        with self._cond:
            if self._closed:
                raise RuntimeError("batcher is closed")
            cap = self.max_queued_images
            if cap is not None and self._queued_images + len(images) > cap:
                raise QueueFull(f"{self._queued_images} images queued for the model, and {len(images)} more would pass "
                                f"the cap of {cap}")
            self._queue.append(pending)
            self._queued_images += len(images)
            self._cond.notify()
        return pending.future

    def abandon(self, future: Future[np.ndarray]) -> int:
        """Drop what is still queued of the request behind ``future`` (from :meth:`submit`): its caller has left,
        so no forward is spent on it. Returns how many of its images will now never be classified."""
        pending = future.pending  # type: ignore[attr-defined]
        with self._cond:
            if pending in self._queue:
                self._queue.remove(pending)
                self._queued_images -= len(pending.images) - pending.taken
            elif not future.cancelled():  # answered, failed, or its last images are in the forward now
                return 0
            future.cancel()  # an untaken request is cancelled; a partly computed one is simply never answered
            return len(pending.images) - pending.taken

    @property
    def queued_images(self) -> int:
        """Images waiting for a forward now (not counting the one running)."""
        return self._queued_images

    def reset_stats(self) -> BatchStats:
        """Count from zero again (the server does after its warm-up forward); returns the counts so far."""
        with self._cond:
            old, self.stats = self.stats, BatchStats()
            if self._observer is not None:
                self._observer.reset()
        return old

    def close(self) -> None:
        """Stop taking requests, finish every queued one, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._worker.join()

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while (parts := self._next_batch()) is not None:
            if not parts:
                continue
            images = np.concatenate([p.images[start:stop] for p, start, stop in parts])
            start_s = time.perf_counter()
            try:
                labels = classify(self._model, images, self._device)
            except Exception as err:
                for p, _, _ in parts:
                    if not p.future.done():
                        p.future.set_exception(err)
                continue
            model_s = time.perf_counter() - start_s
            with self._cond:  # not lost to a concurrent reset_stats
                per_image = model_s / len(images)
                self.seconds_per_image = per_image if not self.seconds_per_image else \
                    (1 - SMOOTHING) * self.seconds_per_image + SMOOTHING * per_image
                s = self.stats
                self.stats = BatchStats(s.batches + 1, s.images + len(images), max(s.largest, len(images)),
                                        s.model_s + model_s)
                if self._observer is not None:
                    self._observer.forward(len(images), model_s)
            offset = 0
            for p, start, stop in parts:
                p.labels[start:stop] = labels[offset:offset + stop - start]
                offset += stop - start
                if stop == len(p.images):
                    p.future.set_result(p.labels)

    def _next_batch(self) -> list[tuple[_Pending, int, int]] | None:
        """Wait until a batch is due and take its parts; ``None`` once closed and drained."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            deadline = self._queue[0].arrived + self._max_delay_s
            while self._queued_images < self.max_batch_size and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._take()

    def _take(self) -> list[tuple[_Pending, int, int]]:
        """Pop up to ``max_batch_size`` images off the queue front, skipping cancelled or failed requests."""
        parts, room = [], self.max_batch_size
        while self._queue and room:
            p = self._queue[0]
            # A fresh request is marked running (it can no longer be cancelled) or dropped if it was
            # cancelled; the rest of a split one is dropped if an earlier part already failed.
            if p.future.done() if p.taken else not p.future.set_running_or_notify_cancel():
                self._queue.popleft()
                self._queued_images -= len(p.images) - p.taken
                continue
            stop = min(len(p.images), p.taken + room)
            parts.append((p, p.taken, stop))
            room -= stop - p.taken
            self._queued_images -= stop - p.taken
            p.taken = stop
            if stop == len(p.images):
                self._queue.popleft()
        return parts
