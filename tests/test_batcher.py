"""The batcher without a network: batches close when full or late, split and reassemble in order."""
from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import CancelledError

import numpy as np
import pytest
import torch
from model_fixtures import make_artifact

from avc_common.artifact import load_artifact
from defense.batcher import Batcher, QueueFull, classify


class FakeModel:
    """Logits whose argmax is the image's first pixel mod 10; records every batch size."""

    def __init__(self, fail: bool = False) -> None:
        self.batch_sizes: list[int] = []
        self.fail = fail

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(len(x))
        if self.fail:
            raise RuntimeError("model exploded")
        label = (x[:, 0, 0, 0] * 255).round().long() % 10
        return torch.nn.functional.one_hot(label, 10).float()


def images_with_labels(labels) -> np.ndarray:
    images = np.zeros((len(labels), 4, 4, 1), dtype=np.uint8)
    images[:, 0, 0, 0] = labels
    return images


def test_classify_follows_the_pixel_convention():
    seen = []
    images = np.arange(2 * 3 * 2 * 3, dtype=np.uint8).reshape(2, 3, 2, 3)  # N x H x W x C
    classify(lambda x: seen.append(x) or torch.zeros(len(x), 10), images)
    x = seen[0]
    assert x.dtype == torch.float32 and x.shape == (2, 3, 3, 2)  # N x C x H x W
    assert torch.equal(x, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)


def test_full_batch_closes_before_the_delay():
    model = FakeModel()
    with Batcher(model, max_batch_size=8, max_delay_ms=10_000) as batcher:
        start = time.monotonic()
        futures = [batcher.submit(images_with_labels([i])) for i in range(8)]
        assert [f.result(timeout=5)[0] for f in futures] == list(range(8))
        assert time.monotonic() - start < 5
    assert model.batch_sizes == [8]


def test_partial_batch_closes_after_the_delay():
    model = FakeModel()
    with Batcher(model, max_batch_size=100, max_delay_ms=50) as batcher:
        start = time.monotonic()
        futures = [batcher.submit(images_with_labels([i])) for i in (3, 4, 5)]
        assert [f.result(timeout=5)[0] for f in futures] == [3, 4, 5]
        assert time.monotonic() - start >= 0.045
    assert model.batch_sizes == [3]


def test_large_request_is_split_and_reassembled_in_order():
    model = FakeModel()
    labels = np.arange(10) % 10
    with Batcher(model, max_batch_size=4, max_delay_ms=1) as batcher:
        assert np.array_equal(batcher.submit(images_with_labels(labels)).result(timeout=5), labels)
    assert model.batch_sizes == [4, 4, 2]
    assert batcher.stats.batches == 3 and batcher.stats.images == 10 and batcher.stats.largest == 4


def test_stats_count_the_time_spent_in_the_model():
    class SlowModel(FakeModel):
        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            time.sleep(0.02)
            return super().__call__(x)

    with Batcher(SlowModel(), max_batch_size=4, max_delay_ms=0) as batcher:
        start = time.perf_counter()
        for label in (1, 2):
            batcher.submit(images_with_labels([label])).result(timeout=5)
        wall = time.perf_counter() - start
    assert batcher.stats.batches == 2 and 0.04 <= batcher.stats.model_s <= wall


def test_reset_stats_returns_the_counts_and_starts_again_from_zero():
    with Batcher(FakeModel(), max_batch_size=4, max_delay_ms=0) as batcher:
        batcher.submit(images_with_labels([1, 2, 3])).result(timeout=5)
        before = batcher.reset_stats()
        batcher.submit(images_with_labels([4])).result(timeout=5)
    assert (before.batches, before.images, before.largest) == (1, 3, 3)
    assert (batcher.stats.batches, batcher.stats.images, batcher.stats.largest) == (1, 1, 1)


def test_requests_share_a_batch_across_a_split():
    model = FakeModel()
    with Batcher(model, max_batch_size=4, max_delay_ms=100) as batcher:
        first = batcher.submit(images_with_labels([1, 2, 3]))
        second = batcher.submit(images_with_labels([4, 5, 6]))
        assert first.result(timeout=5).tolist() == [1, 2, 3]
        # the rest of `second` waits out its delay for company, then goes alone
        assert second.result(timeout=5).tolist() == [4, 5, 6]
    assert model.batch_sizes == [4, 2]


def test_model_error_reaches_the_callers_and_the_worker_lives_on():
    model = FakeModel(fail=True)
    with Batcher(model, max_batch_size=4, max_delay_ms=1) as batcher:
        with pytest.raises(RuntimeError, match="model exploded"):
            batcher.submit(images_with_labels([1, 2, 3, 4, 5, 6])).result(timeout=5)
        model.fail = False
        assert batcher.submit(images_with_labels([7])).result(timeout=5).tolist() == [7]
    assert model.batch_sizes == [4, 1]  # the failed request's second part was dropped


def test_cancelled_request_is_not_classified():
    model = FakeModel()
    with Batcher(model, max_batch_size=4, max_delay_ms=100) as batcher:
        doomed = batcher.submit(images_with_labels([1, 1]))
        assert doomed.cancel()
        assert batcher.submit(images_with_labels([2])).result(timeout=5).tolist() == [2]
    with pytest.raises(CancelledError):
        doomed.result()
    assert model.batch_sizes == [1]


def test_close_finishes_queued_requests_without_waiting_out_the_delay():
    batcher = Batcher(FakeModel(), max_batch_size=64, max_delay_ms=60_000)
    future = batcher.submit(images_with_labels([9]))
    start = time.monotonic()
    batcher.close()
    assert time.monotonic() - start < 5 and future.result(timeout=0).tolist() == [9]
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(images_with_labels([1]))


@pytest.mark.parametrize("bad", [np.zeros((0, 4, 4, 1), np.uint8), np.zeros((2, 4, 4, 1), np.float32),
                                 np.zeros((4, 4, 1), np.uint8)])
def test_submit_refuses_what_is_not_a_uint8_batch(bad):
    with Batcher(FakeModel()) as batcher, pytest.raises(ValueError, match="uint8 N x H x W x C"):
        batcher.submit(bad)


@pytest.fixture(scope="module")
def exported_cnn(tmp_path_factory):
    """The real small CNN as served: exported, saved and loaded back as an artifact."""
    return load_artifact(make_artifact(tmp_path_factory.mktemp("art") / "artifact")).model


def test_same_image_same_label_alone_or_in_any_batch(exported_cnn):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, size=(200, 28, 28, 1), dtype=np.uint8)
        alone = np.array([classify(exported_cnn, images[i:i + 1])[0] for i in range(len(images))])
        whole = classify(exported_cnn, images)
        with Batcher(exported_cnn, max_batch_size=64, max_delay_ms=5) as batcher:
            bounds = np.unique(np.r_[0, rng.integers(1, 200, size=30), 200])
            futures = []

            def submit(a: int, b: int) -> None:
                futures.append((a, batcher.submit(images[a:b])))

            submitters = [threading.Thread(target=submit, args=ab) for ab in itertools.pairwise(bounds)]
            for t in submitters:
                t.start()
            for t in submitters:
                t.join()
            batched = np.empty(200, np.int64)
            for a, future in futures:
                labels = future.result(timeout=30)
                batched[a:a + len(labels)] = labels
        assert len(set(alone.tolist())) > 1  # a meaningful check: not one constant label
        assert np.array_equal(alone, whole) and np.array_equal(alone, batched)
    finally:
        torch.set_num_threads(threads)


class GatedModel(FakeModel):
    """A FakeModel whose forwards wait until ``gate`` is set: a request can be caught mid-computation."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.entered = threading.Event(), threading.Event()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        assert self.gate.wait(10)
        return super().__call__(x)


def test_abandoning_a_request_drops_its_images_that_no_forward_has_taken():
    model = GatedModel()
    with Batcher(model, max_batch_size=2, max_delay_ms=0) as batcher:
        split = batcher.submit(images_with_labels(range(6)))  # batches of 2: the first is in the model now
        assert model.entered.wait(10)
        waiting = batcher.submit(images_with_labels([7]))
        assert batcher.abandon(split) == 4 and batcher.abandon(waiting) == 1  # only the 2 in the forward remain
        assert waiting.cancelled()
        model.gate.set()
    assert model.batch_sizes == [2]  # nothing else was computed for callers who left
    assert batcher.stats.images == 2


def test_abandoning_an_answered_request_drops_nothing():
    with Batcher(FakeModel(), max_batch_size=4, max_delay_ms=0) as batcher:
        future = batcher.submit(images_with_labels([1, 2]))
        assert list(future.result(timeout=10)) == [1, 2]
        assert batcher.abandon(future) == 0


def test_a_request_that_would_pass_the_queue_cap_is_refused_whole():
    model = GatedModel()
    with Batcher(model, max_batch_size=2, max_delay_ms=0, max_queued_images=3) as batcher:
        running = batcher.submit(images_with_labels([1, 2]))  # taken into the forward: no longer queued
        assert model.entered.wait(10)
        queued = batcher.submit(images_with_labels([3, 4, 5]))
        with pytest.raises(QueueFull, match="3 images queued for the model, and 1 more would pass the cap of 3"):
            batcher.submit(images_with_labels([6]))
        assert batcher.queued_images == 3
        model.gate.set()
        assert running.result(timeout=10).tolist() == [1, 2] and queued.result(timeout=10).tolist() == [3, 4, 5]
        assert batcher.submit(images_with_labels([6, 7, 8])).result(timeout=10).tolist() == [6, 7, 8]  # room again
    assert model.batch_sizes == [2, 2, 1, 2, 1]
