"""``python -m defense check crisp.yaml``: test a submission the way the competition's local
``avc-test-model`` did, before anyone builds or ships the image.

It validates the manifest (every problem at once), then starts the server exactly as the
container would (the Dockerfile's ENTRYPOINT + CMD, with this machine's python, the artifact
for the image's model path, loopback and a free port), waits for health, and checks what an
evaluator relies on: ModelInfo, labels in range and equal to the artifact's own, labels
independent of batching and order, clean refusals, memory within the declared limit, and a
clean SIGTERM exit. Exit 0: all passed; 1: a check failed; 2: invalid manifest or arguments.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from avc_common.artifact import load_artifact
from avc_common.cli import add_alias, add_json, at_least, non_negative_int, text_stream, write_json
from avc_common.data import evalset
from avc_common.problems import Problem
from avc_common.rpc import defense_pb2, defense_pb2_grpc
from avc_common.rpc.client import DefenseClient, DefenseError
from defense.batcher import classify
from defense.process import ServerProcess, ServerStartError, free_port, wait_serving
from defense.submission.manifest import Submission, load, with_option

PASS, FAIL, SKIP, INFO = "PASS", "FAIL", "SKIP", "INFO"
CONCURRENCY = 4  # Predict calls one client keeps in flight (DefenseClient's default)


class CheckFailed(Exception):
    """A check's verdict: what the submission did, and what it should have done."""


@dataclass
class Line:
    """One line of the summary."""

    name: str
    status: str
    detail: str


@dataclass
class Report:
    """Everything ``check`` found; printed as a one-screen summary and written as JSON."""

    manifest: str
    lines: list[Line] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.problems:
            return 2
        return 1 if any(line.status == FAIL for line in self.lines) else 0

    def render(self) -> str:
        verdict = {0: "PASS", 1: "FAIL", 2: "FAIL (invalid submission)"}[self.exit_code]
        out = [f"defense check {self.manifest}: {verdict}"]
        out += [f"  {line.status:<4}  {line.name:<18} {line.detail}" for line in self.lines]
        out += [f"    - {problem}" for problem in self.problems]
        if self.command:
            out.append(f"  server command: {' '.join(self.command)}")
        return "\n".join(out)

    def to_json(self) -> str:
        return json.dumps({"manifest": self.manifest, "passed": self.exit_code == 0, "exit_code": self.exit_code,
                           "checks": [asdict(line) for line in self.lines],
                           "problems": [asdict(p) for p in self.problems],
                           "metrics": self.metrics, "command": self.command}, indent=2) + "\n"


def local_command(command: list[str], artifact: Path, port: int) -> list[str]:
    """The container's command as this machine runs it: its own python, the artifact in place of
    the image's model path, and loopback with ``port`` in place of the published address."""
    argv = [sys.executable, *command[1:]] if Path(command[0]).name in ("python", "python3") else list(command)
    argv = with_option(argv, "--model", str(artifact))
    argv = with_option(argv, "--host", "127.0.0.1")
    return with_option(argv, "--port", str(port))


class Session:
    """The checks against a running server, in order; each returns its summary or raises CheckFailed."""

    def __init__(self, sub: Submission, data: evalset.EvalSet, server: ServerProcess, target: str,
                 throughput_images: int, report: Report) -> None:
        artifact = load_artifact(sub.artifact)
        self.expected = classify(artifact.model, data.images)
        self.class_names = artifact.manifest["class_names"]
        self.sub, self.data, self.server, self.target = sub, data, server, target
        self.throughput_images, self.report = throughput_images, report
        self.client = DefenseClient(target, timeout_s=60, concurrency=CONCURRENCY)
        self.labels = np.empty(0, dtype=np.int64)

    def model_info(self) -> str:
        spec = self.client.info()
        want = (*self.sub.input_shape, self.sub.num_classes)
        got = (*spec.model.shape, spec.model.num_classes)
        if got != want:
            raise CheckFailed(f"serves height/width/channels/classes {got}, crisp.yaml says {want}")
        if list(spec.class_names) != self.class_names:
            raise CheckFailed("class names differ from the artifact's manifest")
        return (f"{' x '.join(map(str, spec.model.shape))} uint8 HWC, {spec.model.num_classes} classes, "
                f"up to {spec.max_images_per_request} images per request")

    def classify(self) -> str:
        images, num_classes = self.data.images, self.sub.num_classes
        self.labels = labels = self.client.predict(images)
        if labels.shape != (len(images),):
            raise CheckFailed(f"{labels.shape[0]} labels for {len(images)} images")
        out = np.flatnonzero((labels < 0) | (labels >= num_classes))
        if len(out):
            raise CheckFailed(f"{len(out)} label(s) outside 0..{num_classes - 1}, e.g. {labels[out[0]]}")
        differ = np.flatnonzero(labels != self.expected)
        if len(differ):
            i = differ[0]
            raise CheckFailed(f"{len(differ)} of {len(images)} labels differ from the artifact run in-process "
                              f"(first: image {self.data.names[i]}: served {labels[i]}, model {self.expected[i]})")
        return f"{len(images)} images: labels in 0..{num_classes - 1}, equal to the artifact run in-process"

    def deterministic(self) -> str:
        images, first = self.data.images, self.labels
        order = np.random.default_rng(0).permutation(len(images))
        shuffled = np.empty_like(first)
        shuffled[order] = self.client.predict(images[order])
        singles = np.array([self.client.predict(images[i:i + 1])[0] for i in range(min(16, len(images)))])
        for what, labels in (("again", self.client.predict(images)), ("in shuffled order", shuffled)):
            if not np.array_equal(labels, first):
                raise CheckFailed(f"asked {what}, {int((labels != first).sum())} of {len(images)} labels changed")
        if not np.array_equal(singles, first[:len(singles)]):
            raise CheckFailed("one image per request gives other labels than batched requests")
        return f"same labels again, in shuffled order, and one image per request ({len(singles)} images)"

    def malformed(self) -> str:
        h, w, c = self.sub.input_shape
        image, limit = bytes(h * w * c), self.client.info().max_images_per_request
        cases = {"wrong byte length": [image[:-1]], "empty": [], f"{limit + 1} images": [image] * (limit + 1)}
        with grpc.insecure_channel(self.target) as channel:
            stub = defense_pb2_grpc.DefenseStub(channel)
            for what, images in cases.items():
                try:
                    stub.Predict(defense_pb2.PredictRequest(images=images), timeout=30)
                except grpc.RpcError as err:
                    if err.code() != grpc.StatusCode.INVALID_ARGUMENT:
                        raise CheckFailed(f"{what}: {err.code().name} ({err.details()}), "
                                          "expected INVALID_ARGUMENT") from None
                else:
                    raise CheckFailed(f"{what}: answered with labels, expected INVALID_ARGUMENT")
            reply = stub.Predict(defense_pb2.PredictRequest(images=[self.data.images[0].tobytes()]), timeout=30)
        if len(reply.labels) != 1:
            raise CheckFailed("after the refusals, a good request got no label")
        return f"{', '.join(cases)}: INVALID_ARGUMENT each; still serving"

    def accuracy(self) -> str:
        if self.data.labels is None:
            return "no labels (built-in random images; pass --data DIR)"
        correct = int((self.labels == self.data.labels).sum())
        self.report.metrics["clean_accuracy"] = correct / len(self.labels)
        return f"clean accuracy {correct / len(self.labels):.2%} ({correct}/{len(self.labels)})"

    def throughput(self) -> str:
        count = self.throughput_images
        if not count:
            return "not measured (--throughput-images 0)"
        batch = np.resize(self.data.images, (count, *self.data.images.shape[1:]))
        start = time.perf_counter()
        self.client.predict(batch)
        rate = count / (time.perf_counter() - start)
        self.report.metrics["throughput_images_per_s"] = round(rate, 1)
        return (f"{rate:.0f} images/s ({count} images in requests of up to "
                f"{self.client.info().max_images_per_request}, {CONCURRENCY} in flight)")

    def memory(self) -> str:
        rss, limit = self.server.peak_rss(), self.sub.memory_bytes
        if rss is None:
            return "peak memory not measurable on this system"
        self.report.metrics["peak_rss_bytes"] = rss
        used = f"peak RSS {rss / 2**20:.0f} MiB within resources.memory {self.sub.doc['resources']['memory']}"
        if rss > limit:
            raise CheckFailed(used.replace("within", "exceeds") + ": the container would be killed")
        return used

    def shutdown(self) -> str:
        status = self.server.stop()
        if status != 0:
            raise CheckFailed(f"SIGTERM: exited {status}:\n{self.server.log_tail()}")
        return "SIGTERM: drained in-flight calls and exited 0"


# (summary name, Session method, status when it passes, whether the later checks need it to pass)
CHECKS = [
    ("model info", Session.model_info, PASS, True),
    ("labels", Session.classify, PASS, True),
    ("deterministic", Session.deterministic, PASS, False),
    ("malformed requests", Session.malformed, PASS, False),
    ("accuracy", Session.accuracy, INFO, False),
    ("throughput", Session.throughput, INFO, False),
    ("memory", Session.memory, PASS, False),
    ("shutdown", Session.shutdown, PASS, False),
]


def _run(report: Report, name: str, check: Callable[[], str], status: str = PASS) -> bool:
    """One check into the report; False if it failed."""
    try:
        report.lines.append(Line(name, status, check()))
        return True
    except (CheckFailed, ServerStartError, DefenseError, grpc.RpcError, ValueError) as err:
        report.lines.append(Line(name, FAIL, str(err)))
        return False


def _serve_and_check(sub: Submission, data: evalset.EvalSet, report: Report, timeout_s: float,
                     throughput_images: int) -> None:
    port = free_port()
    target = f"127.0.0.1:{port}"
    report.command = local_command(sub.command, sub.artifact, port)
    with ServerProcess(report.command, cwd=sub.dockerfile.parent) as server:
        if not _run(report, "server", lambda: f"SERVING {wait_serving(server, target, timeout_s):.1f} s after start "
                                              f"on {target}"):
            return
        session = Session(sub, data, server, target, throughput_images, report)
        try:
            for i, (name, check, status, needed) in enumerate(CHECKS):
                if not _run(report, name, partial(check, session), status) and needed:
                    report.lines += [Line(later, SKIP, f"needs {name}") for later, *_ in CHECKS[i + 1:]]
                    break
        finally:
            session.client.close()


def run_check(manifest: str | Path, images: str | Path | None = None, timeout_s: float = 120.0,
              throughput_images: int = 512) -> Report:
    """Validate the submission, then serve and check it; the report's exit_code is the verdict."""
    report = Report(str(manifest))
    sub, report.problems = load(manifest)
    if sub is not None and images is not None:
        report.problems = evalset.folder_problems(images, sub.input_shape, sub.num_classes, flag="--data")
    if report.problems:
        report.lines.append(Line("manifest", FAIL, f"{len(report.problems)} problem(s); nothing was started:"))
    else:
        data = evalset.load_folder(images) if images is not None else evalset.fixture(sub.input_shape)
        kind = "labelled" if data.labels is not None else "random"
        report.lines.append(Line("manifest", PASS, f"valid; artifact {sub.doc['artifact']['path']} sha256 "
                                 f"{sub.doc['artifact']['sha256'][:12]}... verified; {len(data.images)} {kind} images"))
        _serve_and_check(sub, data, report, timeout_s, throughput_images)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The check's flags (``python -m defense check`` and ``avc-check``)."""
    parser.add_argument("manifest", nargs="?", default="crisp.yaml", help="the submission manifest")
    add_alias(parser, "--images", parser.add_argument(
        "--data", type=Path, metavar="DIR", default=None,
        help="evaluation images: .npy uint8 HWC files + labels.yml (default: 32 built-in random images)"))
    add_json(parser, "the report as JSON")
    parser.add_argument("--timeout-s", metavar="SECONDS", type=at_least(1, float), default=120.0,
                        help="how long the server may take to report SERVING")
    parser.add_argument("--throughput-images", metavar="N", type=non_negative_int, default=512,
                        help="images classified to measure throughput (0 = skip)")


def run(args: argparse.Namespace) -> int:
    """Print the summary, write ``--json``; the verdict as the exit status (0 pass, 1 a check failed, 2 invalid)."""
    report = run_check(args.manifest, args.data, args.timeout_s, args.throughput_images)
    write_json(args.json, report.to_json())
    print(report.render(), file=text_stream(args.json))
    return report.exit_code
