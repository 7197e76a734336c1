"""Scaling one score: one scoring process against two Ray workers, one server replica against two, on a fixed job;
then, from the per-query costs measured on the way, a projection of an AVC-sized score (docs/scaling.md).

    python bench/scale.py                      # 64 images, 3 attacks, 1000 queries: several minutes on 2 cores
    python bench/scale.py --fast               # a smoke run of every stage, in seconds (tests/test_bench_scale.py)

The job: the small CNN (random weights, biases zeroed so that random images get varied labels), ``--images``
random 28x28x1 images labelled with the model's own answers (so every image is attacked), ``--attacks`` at
``--budget`` queries per image, in chunks of ``--batch-images``. Each server is ``python -m defense serve`` with
``--threads 1`` as a child process (:mod:`defense.process`). Each scorer is built from the scorer's own pieces
(:mod:`attacks.scoring.cli`: the model, the suite, the Ray workers; :class:`attacks.scoring.pipeline.SuiteRun`)
and timed from its first unit to its last chunk: starting Ray and its workers (seconds, once per score) is
reported beside, not inside, the rate. Scenarios:

1. ``single``: one process, its default ``--concurrency``, against one server;
2. ``ray-2``: Ray with ``--workers 2`` (one CPU and one torch thread each) against the same server;
3. ``ray-2, 2 replicas``: the same workers against two servers (``--target A,B``: round_robin).

It prints images/s per scenario, ``ray 2-worker speed-up: X`` (2 over 1) and ``2-replica speed-up: X`` (3 over
2), and whether every scenario gave the same per-image distances. Client, workers and servers share this
machine's cores: on 2 cores, two workers and two servers compete for them, so these ratios say what the
machinery costs and where the bottleneck is, not what separate machines would give.

The projection (500 images x 5 attacks x 1000 queries on a ResNet-18 at 64x64x3, on N GPU replicas and M scoring
workers) takes, measured here at that image shape: a scoring worker's CPU per query (the same attacks against a
served 64x64x3 model whose forward costs next to nothing, so what is left is the attacks' arithmetic, the
ledger and gRPC) and a server's CPU per image outside its model (decoding, batching, replying); and, not
measurable here, the GPU's ResNet-18 images/s (``--gpu-images-per-s``, an assumption until bench/gpu.py has
measured it). A replica serves at most the slower of its GPU and its Python (they overlap: the batcher's thread
runs the model while the event loop decodes); a score takes its queries over the smaller of what the replicas
serve and what the workers ask.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import torch

from attacks import ArtifactModel
from attacks.scoring import cli as score_cli
from attacks.scoring.pipeline import SuiteRun, collect
from avc_common.artifact import save_artifact
from avc_common.atomic import atomic_write_text
from avc_common.cli import HelpFormatter, positive_float, positive_int
from defense.batcher import classify
from defense.process import ServerProcess, free_port, wait_serving
from defense.stats import ServerStats, fresh
from training.models import create_model

ROOT = Path(__file__).resolve().parent.parent
AVC = {"images": 500, "attacks": 5, "budget": 1000}  # the paper's score: 500 images, 5 attacks, 1000 queries
GPU_IMAGES_PER_S = 20_000.0  # ResNet-18 64x64 on one GPU: an assumption (docs/scaling.md), not a measurement
REPLICAS, WORKERS = (1, 2, 4, 8), (1, 4, 16, 64)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_artifact(out_dir: Path, arch: str, shape: tuple[int, int, int], classes: int) -> Path:
    """A random-weight model behind its Normalize layer, biases zeroed (varied labels), as training exports it;
    ``arch`` "linear" is one linear layer: a forward that costs next to nothing beside the attacks."""
    h, w, c = shape
    torch.manual_seed(0)
    net = (torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(h * w * c, classes)) if arch == "linear"
           else create_model(arch, classes, c, [0.5] * c, [0.25] * c)).eval()
    with torch.no_grad():
        for layer in net.modules():
            if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)) and layer.bias is not None:
                layer.bias.zero_()
    return save_artifact(net, out_dir / arch, input_shape=shape, class_names=[f"c{i}" for i in range(classes)],
                         arch=arch, dataset="bench", training={"loss": "none (bench: random weights)"}, metrics={})


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """``python -m defense serve`` on loopback with one torch thread, its counters in a stats file; started at once,
    :meth:`wait` until SERVING (so that several servers load torch side by side)."""

    def __init__(self, artifact: Path, folder: Path, stack: ExitStack) -> None:
        port = free_port()
        self.target = f"127.0.0.1:{port}"
        self.stats_file = folder / f"stats-{port}.json"
        self.process = stack.enter_context(ServerProcess(
            [sys.executable, "-m", "defense", "serve", "--model", str(artifact), "--host", "127.0.0.1", "--port",
             str(port), "--threads", "1", "--grace-s", "1", "--stats-file", str(self.stats_file)], cwd=ROOT))

    def wait(self) -> Server:
        wait_serving(self.process, self.target, timeout_s=120)
        return self

    def stats(self) -> ServerStats:
        return fresh(self.stats_file, self.process.proc.pid)

    def cpu_s(self) -> float:
        return cpu_s(self.process.proc.pid)


@contextmanager
def measured(servers: list[Server]) -> Iterator[dict[str, float]]:
    """Wall, this process's CPU, and the servers' CPU, images and model seconds over the block."""
    before = [(s.stats(), s.cpu_s()) for s in servers]
    wall, cpu, out = time.perf_counter(), time.process_time(), {}
    yield out
    out["wall_s"], out["client_cpu_s"] = time.perf_counter() - wall, time.process_time() - cpu
    after = [(s.stats(), s.cpu_s()) for s in servers]
    counted = [a.since(b) for (a, _), (b, _) in zip(after, before)]
    out["server_images"] = [c.batch_images for c in counted]
    out["server_model_s"] = sum(c.model_s for c in counted)
    out["server_cpu_s"] = sum(a - b for (_, a), (_, b) in zip(after, before))


def score(target: str, images: np.ndarray, labels: np.ndarray, args: argparse.Namespace, servers: list[Server],
          workers: int | None, folder: Path) -> dict:
    """One timed score of the job against ``target`` (``workers``: on that many Ray workers)."""
    argv = ["--target", target, "--attacks", args.attacks, "--budget", str(args.budget), "--batch-images",
            str(args.batch_images), "--no-progress", "--device", "cpu"]
    flags = score_cli.parse_args([*argv, *(["--ray", "--workers", str(workers)] if workers else [])])
    suite, _ = score_cli.build_attacks(flags)
    model, _, _ = score_cli.open_model(flags)
    began = time.perf_counter()
    runner = score_cli.start_workers(flags, suite) if workers else None
    startup_s = time.perf_counter() - began
    try:
        run = SuiteRun(model, images, labels, suite, Path(tempfile.mkdtemp(dir=folder)), args.budget,
                       batch_images=args.batch_images, progress=False, concurrency=flags.concurrency, runner=runner)
        with measured(servers) as m:
            chunks = run.run(lambda done: None)
    finally:
        if runner is not None:
            runner.close()
        model.client.close()
    scores = collect(chunks, list(suite))
    queries = int(scores.queries.sum())
    return {**m, "startup_s": startup_s, "images_per_s": len(images) / m["wall_s"], "queries": queries,
            "queries_per_s": queries / m["wall_s"], "workers": workers, "replicas": len(servers),
            "concurrency": run.concurrency, "distances": scores.distances.tolist()}


def shape_costs(server: Server, artifact: Path, folder: Path, args: argparse.Namespace) -> dict:
    """Per-query client CPU and per-image server CPU outside the model, at 64x64x3, against a near-free model.

    The server's CPU outside the model is its CPU time less the wall time of its forwards: on a core shared with
    other work a forward waits for the CPU, its wall time exceeds its CPU time and the difference can come out below
    zero (seen with other benchmarks running beside the suite); it is then read as zero, not as a negative cost."""
    images = np.random.default_rng(2).integers(0, 256, (args.shape_images, 64, 64, 3), dtype=np.uint8)
    labels = ArtifactModel(artifact)(images)
    job = argparse.Namespace(**{**vars(args), "budget": args.shape_budget, "batch_images": args.shape_images})
    single = score(server.target, images, labels, job, [server], None, folder)
    served = sum(single["server_images"])
    return {"client_cpu_s_per_query": single["client_cpu_s"] / single["queries"],
            "server_overhead_s_per_image": max(single["server_cpu_s"] - single["server_model_s"], 0.0) / served,
            "images": args.shape_images, "budget": args.shape_budget, "queries": single["queries"]}


def resnet18_cpu_s_per_image(batch: int) -> float:
    """ResNet-18 at 64x64x3 (200 classes) on this CPU, one thread, at ``batch``: for scale beside the GPU's."""
    model = create_model("resnet18", 200, 3, [0.5] * 3, [0.25] * 3).eval()
    images = np.random.default_rng(3).integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8)
    classify(model, images)
    began = time.perf_counter()
    classify(model, images)
    return (time.perf_counter() - began) / batch


def projection(costs: dict, gpu_images_per_s: float) -> dict:
    """Hours of an AVC-sized score per (replicas, workers), and the workers that keep one GPU replica busy."""
    queries = AVC["images"] * AVC["attacks"] * AVC["budget"]
    replica_per_s = 1 / max(1 / gpu_images_per_s, costs["server_overhead_s_per_image"])
    worker_per_s = 1 / costs["client_cpu_s_per_query"]
    hours = {f"{n}x{m}": queries / min(n * replica_per_s, m * worker_per_s) / 3600 for n in REPLICAS for m in WORKERS}
    return {"queries": queries, "replica_images_per_s": replica_per_s, "worker_queries_per_s": worker_per_s,
            "workers_per_replica": replica_per_s / worker_per_s, "gpu_images_per_s": gpu_images_per_s, "hours": hours}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scale.py", description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--images", type=positive_int, default=64, help="images in the scoring job")
    p.add_argument("--attacks", default="hsja,geoda,boundary", help="the job's attacks (score.py --attacks)")
    p.add_argument("--budget", type=positive_int, default=1000, help="queries per image per attack")
    p.add_argument("--batch-images", type=positive_int, default=16, help="images per chunk (units: chunks x attacks)")
    p.add_argument("--shape-images", type=positive_int, default=8,
                   help="images of the 64x64x3 run that measures the per-query costs at the AVC shape")
    p.add_argument("--shape-budget", type=positive_int, default=200, help="queries per image per attack in that run")
    p.add_argument("--resnet-batch", type=positive_int, default=64, help="batch of the ResNet-18 CPU forward timing")
    p.add_argument("--gpu-images-per-s", type=positive_float, default=GPU_IMAGES_PER_S,
                   help="ResNet-18 64x64 images/s of one GPU replica's model, for the projection (an assumption "
                        "until bench/gpu.py measures it)")
    p.add_argument("--fast", action="store_true",
                   help="a smoke run: 8 images, budget 40, chunks of 4, a 2-image shape run at budget 40")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write every figure here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.fast:
        args.images, args.budget, args.batch_images = 8, 40, 4
        args.shape_images, args.shape_budget, args.resnet_batch = 2, 40, 4
    torch.set_num_threads(1)
    import ray  # the dev extra has it (pip install 'trades-avc[ray]'); the scorer imports it only with --ray

    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp, ExitStack() as stack:
        folder = Path(tmp)
        artifact = build_artifact(folder, "small_cnn", (28, 28, 1), 10)
        shaped = build_artifact(folder, "linear", (64, 64, 3), 200)
        servers = [Server(artifact, folder, stack) for _ in range(2)]
        shape_server = Server(shaped, folder, stack)
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)  # while the servers load
        stack.callback(ray.shutdown)
        images = np.random.default_rng(1).integers(0, 256, (args.images, 28, 28, 1), dtype=np.uint8)
        labels = ArtifactModel(artifact)(images)
        for server in (*servers, shape_server):
            server.wait()
        runs = {}
        for name, target, workers, serving in (("single", servers[0].target, None, servers[:1]),
                                               ("ray-2", servers[0].target, 2, servers[:1]),
                                               ("ray-2, 2 replicas", f"{servers[0].target},{servers[1].target}", 2,
                                                servers)):
            log(f"scoring: {name}")
            runs[name] = score(target, images, labels, args, serving, workers, folder)
        log("per-query costs at 64x64x3")
        costs = {**shape_costs(shape_server, shaped, folder, args),
                 "resnet18_cpu_s_per_image": resnet18_cpu_s_per_image(args.resnet_batch)}
    same = all(run["distances"] == runs["single"]["distances"] for run in runs.values())
    projected = projection(costs, args.gpu_images_per_s)
    report = {"job": {"images": args.images, "attacks": args.attacks, "budget": args.budget,
                      "batch_images": args.batch_images, "cpus": os.cpu_count()},
              "runs": {name: {k: v for k, v in run.items() if k != "distances"} for name, run in runs.items()},
              "same_results": same, "costs": costs, "projection": projected}
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(report, indent=1) + "\n")
    for name, run in runs.items():
        log(f"{name:>18}: {run['images_per_s']:7.2f} images/s  {run['queries_per_s']:8.0f} queries/s  "
            f"(start {run['startup_s']:.1f} s; server images {run['server_images']}; this process "
            f"{run['client_cpu_s'] / run['wall_s']:.2f} cores, servers {run['server_cpu_s'] / run['wall_s']:.2f})")
    hours = projected["hours"]
    log(f"projection ({projected['queries']} queries; a replica {projected['replica_images_per_s']:.0f} images/s at "
        f"{args.gpu_images_per_s:.0f} GPU images/s, a worker {projected['worker_queries_per_s']:.0f} queries/s): "
        + ", ".join(f"{key} {value:.2f} h" for key, value in hours.items()))
    print(f"same per-image results: {'yes' if same else 'no'}")
    print(f"client cpu ms per query at 64x64x3: {costs['client_cpu_s_per_query'] * 1e3:.3f}")
    print(f"server overhead ms per image at 64x64x3: {costs['server_overhead_s_per_image'] * 1e3:.3f}")
    print(f"resnet18 cpu ms per image: {costs['resnet18_cpu_s_per_image'] * 1e3:.2f}")
    print(f"workers per gpu replica: {projected['workers_per_replica']:.1f}")
    print(f"ray 2-worker speed-up: {runs['ray-2']['images_per_s'] / runs['single']['images_per_s']:.2f}")
    print(f"2-replica speed-up: {runs['ray-2, 2 replicas']['images_per_s'] / runs['ray-2']['images_per_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
