"""Fuzzing the real server from outside: bodies that are not protobuf, malformed requests and a flood, with the caps on.

The server must answer every call with a status its contract names (docs/grpc.md), never exit or log
a traceback, answer every valid call with the model's own labels, and keep its memory within the caps.
The bench starts ``python -m defense serve`` as a subprocess (:mod:`defense.process`) on a small CNN
artifact with small ``--max-concurrent-calls`` and ``--max-queued-images``, and sends everything from
this process on one ``grpc.aio`` channel, bodies as raw bytes (no serializers: anything can be sent):

- ``not_protobuf``: random bytes, truncated requests, invalid wire types -> INVALID_ARGUMENT;
- ``wrong_size``, ``empty``, ``too_many``: PredictRequests with images of other byte lengths, none, or one
  more than ``--max-images-per-request`` -> INVALID_ARGUMENT; ``oversized``: beyond gRPC's receive limit ->
  RESOURCE_EXHAUSTED; ``unknown_method`` -> UNIMPLEMENTED;
- ``valid``: 1 to 16 images, mixed in among all of the above, never more calls at once than the calls cap -> OK;
- ``flood``: far more calls at once than the calls cap, of ``--max-images-per-request`` or 8 images, so that
  both caps refuse some -> OK, or RESOURCE_EXHAUSTED with the retry hint (busy, not charged);
- ``after_flood``: valid requests again -> OK: the server still answers, and right.

Every answer's labels are checked against the same artifact run in this process, on images whose best
class beats the next by at least :data:`MARGIN` (so that no batch's float rounding can flip one). The
bench prints the status codes per class, whether the server exited, the "Traceback"s in its log, the
valid answers and how many were right, and the server's peak resident memory (``VmHWM``), and writes
them with ``--json``. Exit 0 when every call got an expected status, every answer was right, and the
server neither exited nor logged a traceback.

    python bench/fuzz_server.py                  # about 2,300 requests
    python bench/fuzz_server.py --fast           # about 130, seconds (tests/test_bench_fuzz.py)
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import torch

from avc_common.artifact import load_artifact, save_artifact
from avc_common.cli import (
    HelpFormatter,
    add_json,
    non_negative_int,
    positive_float,
    positive_int,
    text_stream,
    write_json,
)
from avc_common.images import ImageShape
from avc_common.rpc import PUSHBACK_KEY, defense_pb2
from avc_common.tensors import to_model_input
from defense.process import ServerProcess, ServerStartError, free_port, wait_serving
from defense.server import SERVICE
from defense.validation import max_message_bytes
from training.models import create_model

ROOT = Path(__file__).resolve().parent.parent
PREDICT = f"/{SERVICE}/Predict"
SHAPE = ImageShape(28, 28, 1)
MARGIN = 1e-5  # least logit gap between a checked image's best and next class: 1000 x the batching drift measured
OK, INVALID, EXHAUSTED, UNIMPLEMENTED = (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT,
                                         grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNIMPLEMENTED)
# class -> (calls in the full run, the statuses the contract allows for it)
PLAN = {
    "not_protobuf": (500, {INVALID}),
    "wrong_size": (300, {INVALID}),
    "empty": (100, {INVALID}),
    "too_many": (100, {INVALID}),
    "oversized": (50, {EXHAUSTED}),
    "unknown_method": (20, {UNIMPLEMENTED}),
    "valid": (500, {OK}),
    "flood": (600, {OK, EXHAUSTED}),
    "after_flood": (100, {OK}),
}
FAST_DIVISOR = 20  # --fast: each class's calls over this, at least 2
FLOOD_BODIES = 16  # distinct flood requests, sent in turn (a flood's bodies would not fit in memory otherwise)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def random_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *SHAPE), dtype=np.uint8)


def predict_request(images: np.ndarray) -> bytes:
    return defense_pb2.PredictRequest(images=[image.tobytes() for image in images]).SerializeToString()


@dataclass
class Call:
    """One request: its class, method path and body, and the labels a valid one must get back."""

    kind: str
    path: str
    body: bytes
    labels: np.ndarray | None = None


@dataclass
class Tally:
    """What came back, per class: status codes, valid answers and the right ones, busy refusals by cap."""

    codes: dict[str, Counter] = field(default_factory=dict)
    answers: int = 0
    right: int = 0
    busy_with_hint: int = 0
    busy_by_cap: Counter = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)

    def record(self, call: Call, code: grpc.StatusCode, details: str = "", trailers=None, reply: bytes = b"") -> None:
        self.codes.setdefault(call.kind, Counter())[code.name] += 1
        if code not in PLAN[call.kind][1]:
            self.unexpected.append(f"{call.kind}: {code.name}: {details}"[:300])
        if code == OK and call.labels is not None:
            self.answers += 1
            labels = np.asarray(defense_pb2.PredictResponse.FromString(reply).labels)
            self.right += int(np.array_equal(labels, call.labels))
        if code == EXHAUSTED and call.kind == "flood":
            self.busy_with_hint += int(PUSHBACK_KEY in dict(trailers or ()))
            self.busy_by_cap["--max-queued-images" if "--max-queued-images" in details else
                             "--max-concurrent-calls" if "--max-concurrent-calls" in details else "other"] += 1


def build_artifact(out_dir: Path) -> Path:
    """The small CNN with random weights and zero biases, exported: with biases an untrained net answers one class
    for every image, and a label check would prove nothing."""
    torch.manual_seed(0)
    net = create_model("small_cnn", 10, SHAPE.channels, [0.3], [0.4]).eval()
    with torch.no_grad():
        for layer in net.modules():
            if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
                layer.bias.zero_()
    return save_artifact(net, out_dir / "smallcnn", input_shape=tuple(SHAPE), class_names=[f"c{i}" for i in range(10)],
                         arch="small_cnn", dataset="fashion_mnist", training={"loss": "none (bench: random weights)"},
                         metrics={})


def clear_images(model: torch.nn.Module, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random images whose best class beats the next by :data:`MARGIN` in-process, and those classes."""
    kept, labels, round_ = [], [], 0
    while sum(map(len, kept)) < n:
        images = random_images(2 * n, seed + round_)
        with torch.inference_mode():
            top = model(to_model_input(images)).topk(2, dim=1)
        clear = (top.values[:, 0] - top.values[:, 1] >= MARGIN).numpy()
        kept.append(images[clear])
        labels.append(top.indices[:, 0].numpy()[clear])
        round_ += 1
    return np.concatenate(kept)[:n], np.concatenate(labels)[:n]


def bad_calls(counts: dict[str, int], max_images: int, rng: np.random.Generator) -> list[Call]:
    """The requests the server must refuse, by class."""
    nbytes, calls = SHAPE.nbytes, []
    valid = predict_request(random_images(2, seed=0))
    for i in range(counts["not_protobuf"]):
        form = i % 3
        if form == 0:  # random bytes (some parse, as unknown fields: an empty request, refused all the same)
            body = rng.integers(0, 256, int(rng.integers(1, 2048)), dtype=np.uint8).tobytes()
        elif form == 1:  # a request cut inside an image
            body = valid[:int(rng.integers(2, len(valid) - 1))]
        else:  # wire type 7, which does not exist, then anything
            body = b"\x0f" + rng.integers(0, 256, int(rng.integers(0, 64)), dtype=np.uint8).tobytes()
        calls.append(Call("not_protobuf", PREDICT, body))
    for _ in range(counts["wrong_size"]):
        sizes = [nbytes] * int(rng.integers(0, 8))
        sizes.insert(int(rng.integers(0, len(sizes) + 1)), int(rng.choice([0, 1, nbytes - 1, nbytes + 1, 3 * nbytes])))
        body = defense_pb2.PredictRequest(images=[bytes(size) for size in sizes]).SerializeToString()
        calls.append(Call("wrong_size", PREDICT, body))
    calls += [Call("empty", PREDICT, b"") for _ in range(counts["empty"])]
    too_many = defense_pb2.PredictRequest(images=[bytes(nbytes)] * (max_images + 1)).SerializeToString()
    calls += [Call("too_many", PREDICT, too_many) for _ in range(counts["too_many"])]
    over_limit = max_message_bytes(SHAPE, max_images) // nbytes + 1  # images: more bytes than gRPC takes in
    oversized = defense_pb2.PredictRequest(images=[bytes(nbytes)] * over_limit).SerializeToString()
    calls += [Call("oversized", PREDICT, oversized) for _ in range(counts["oversized"])]
    calls += [Call("unknown_method", "/defense.v1.Defense/Nope", valid) for _ in range(counts["unknown_method"])]
    return calls


def valid_calls(kind: str, count: int, images: np.ndarray, labels: np.ndarray, sizes: list[int],
                rng: np.random.Generator, distinct: int | None = None) -> list[Call]:
    """``count`` Predicts of clear images, ``sizes`` images each in turn; ``distinct`` bodies at most, reused."""
    made: list[Call] = []
    for i in range(min(count, distinct or count)):
        pick = rng.choice(len(images), sizes[i % len(sizes)], replace=False)
        made.append(Call(kind, PREDICT, predict_request(images[pick]), labels[pick]))
    return [made[i % len(made)] for i in range(count)]


async def send(target: str, calls: list[Call], concurrency: int, timeout_s: float, tally: Tally) -> None:
    """Every call, at most ``concurrency`` at once, each recorded as its status (and reply)."""
    limit = asyncio.Semaphore(concurrency)
    async with grpc.aio.insecure_channel(target) as channel:
        methods = {path: channel.unary_unary(path) for path in {call.path for call in calls}}  # bytes in, bytes out

        async def one(call: Call) -> None:
            async with limit:
                try:
                    reply = await methods[call.path](call.body, timeout=timeout_s)
                except grpc.aio.AioRpcError as err:
                    tally.record(call, err.code(), err.details() or "", err.trailing_metadata())
                else:
                    tally.record(call, OK, reply=reply)

        await asyncio.gather(*(one(call) for call in calls))


def fuzz(args: argparse.Namespace, tmp: Path) -> dict:
    """Start the server, send every phase, stop it; what happened, as the JSON report's fields."""
    divisor = FAST_DIVISOR if args.fast else 1
    counts = {kind: max(n // divisor, 2) for kind, (n, _) in PLAN.items()}
    rng = np.random.default_rng(args.seed)
    model = load_artifact(art := build_artifact(tmp)).model
    images, labels = clear_images(model, 2 * args.max_images_per_request, args.seed)  # enough for any request
    log(f"labels of the checked images: {dict(sorted(Counter(labels.tolist()).items()))}")
    mixed = bad_calls(counts, args.max_images_per_request, rng) + valid_calls(
        "valid", counts["valid"], images, labels, list(range(1, 17)), rng)
    mixed = [mixed[i] for i in rng.permutation(len(mixed))]
    flood = valid_calls("flood", counts["flood"], images, labels, [args.max_images_per_request, 8], rng, FLOOD_BODIES)
    after = valid_calls("after_flood", counts["after_flood"], images, labels, [1, 4, 16], rng)
    port = free_port()
    argv = [sys.executable, "-m", "defense", "serve", "--model", str(art), "--host", "127.0.0.1", "--port", str(port),
            "--threads", str(args.threads), "--max-images-per-request", str(args.max_images_per_request),
            "--max-batch-size", str(args.max_images_per_request), "--max-concurrent-calls",
            str(args.max_concurrent_calls), "--max-queued-images", str(args.max_queued_images), "--grace-s", "2"]
    tally, started = Tally(), time.perf_counter()
    target = f"127.0.0.1:{port}"
    with ServerProcess(argv, cwd=ROOT) as server:
        wait_serving(server, target, timeout_s=120)
        warm_rss = server.peak_rss()  # loaded and warmed up
        for name, calls, concurrency in (("mixed", mixed, args.max_concurrent_calls),
                                         ("flood", flood, args.flood_concurrency),
                                         ("after_flood", after, args.max_concurrent_calls)):
            log(f"{name}: {len(calls)} calls, {concurrency} at once ...")
            asyncio.run(send(target, calls, concurrency, args.timeout_s, tally))
        peak_rss = server.peak_rss()
        alive = server.proc.poll() is None
        exit_status = server.stop()
        server_log = server.log_tail(lines=sys.maxsize)
    return {"seconds": time.perf_counter() - started, "requests": sum(map(len, (mixed, flood, after))),
            "classes": {kind: {"sent": counts[kind], "expected": sorted(c.name for c in PLAN[kind][1]),
                               "codes": dict(tally.codes.get(kind, {}))} for kind in PLAN},
            "unexpected": len(tally.unexpected), "unexpected_examples": tally.unexpected[:10],
            "crashed": not alive, "exit_status": exit_status, "tracebacks": server_log.count("Traceback"),
            "valid_answers": tally.answers, "valid_right": tally.right, "busy_with_hint": tally.busy_with_hint,
            "busy_by_cap": dict(tally.busy_by_cap), "peak_rss_after_warmup_bytes": warm_rss, "peak_rss_bytes": peak_rss,
            "caps": {"max_concurrent_calls": args.max_concurrent_calls, "max_queued_images": args.max_queued_images,
                     "max_images_per_request": args.max_images_per_request}}


def passed(report: dict) -> bool:
    return (not report["unexpected"] and not report["crashed"] and report["exit_status"] == 0
            and not report["tracebacks"] and report["valid_answers"] == report["valid_right"] > 0)


def summary(report: dict) -> str:
    mib = {key: f"{report[key] / 2**20:.0f}" if report[key] else "?"
           for key in ("peak_rss_bytes", "peak_rss_after_warmup_bytes")}
    lines = [f"{'class':<15} {'sent':>5}  statuses (expected: ...)"]
    for kind, row in report["classes"].items():
        codes = ", ".join(f"{code} {n}" for code, n in sorted(row["codes"].items()))
        lines.append(f"{kind:<15} {row['sent']:>5}  {codes}  (expected: {' or '.join(row['expected'])})")
    lines += [f"requests: {report['requests']} in {report['seconds']:.1f} s",
              f"unexpected statuses: {report['unexpected']}",
              *(f"  {example}" for example in report["unexpected_examples"]),
              f"server exited during the fuzz: {'yes' if report['crashed'] else 'no'}; "
              f"exit status after SIGTERM: {report['exit_status']}",
              f"tracebacks in the server log: {report['tracebacks']}",
              f"valid answers: {report['valid_answers']}, right: {report['valid_right']}",
              f"busy refusals with the retry hint: {report['busy_with_hint']} "
              f"(by cap: {', '.join(f'{cap} {n}' for cap, n in sorted(report['busy_by_cap'].items())) or 'none'})",
              f"server peak RSS MiB: {mib['peak_rss_bytes']} (after warm-up: "
              f"{mib['peak_rss_after_warmup_bytes']}), with "
              + ", ".join(f"--{cap.replace('_', '-')} {n}" for cap, n in report["caps"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--fast", action="store_true",
                   help=f"each class's calls / {FAST_DIVISOR} (at least 2): a few seconds, for the test")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seeds the images and the bad bodies")
    p.add_argument("--threads", metavar="N", type=positive_int, default=1, help="the server's torch threads")
    p.add_argument("--max-images-per-request", metavar="N", type=positive_int, default=256,
                   help="the server's flag, and the flood's large requests")
    p.add_argument("--max-concurrent-calls", metavar="N", type=positive_int, default=8,
                   help="the server's cap, and the calls at once outside the flood")
    p.add_argument("--max-queued-images", metavar="N", type=positive_int, default=512,
                   help="the server's cap (at least --max-images-per-request): two full requests, so that the flood "
                        "meets it as well as the calls cap")
    p.add_argument("--flood-concurrency", metavar="N", type=positive_int, default=64,
                   help="the flood's calls at once (above --max-concurrent-calls, to reach the caps)")
    p.add_argument("--timeout-s", metavar="SECONDS", type=positive_float, default=60.0, help="every call's deadline")
    add_json(p, "the report")
    args = p.parse_args(argv)
    if args.max_queued_images < args.max_images_per_request:
        p.error(f"--max-queued-images: expected at least --max-images-per-request ({args.max_images_per_request}), "
                f"got {args.max_queued_images}")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as tmp:
        try:
            report = fuzz(args, Path(tmp))
        except ServerStartError as err:
            print(f"error: the server did not start: {err}", file=sys.stderr)
            return 1
    report["machine"] = f"{os.cpu_count()} cores, torch {torch.__version__}"
    write_json(args.json, json.dumps(report, indent=1) + "\n")
    print(summary(report), file=text_stream(args.json))
    return 0 if passed(report) else 1


if __name__ == "__main__":
    sys.exit(main())
