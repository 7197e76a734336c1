"""The Dockerfile: lint-clean, its exact ENTRYPOINT serves outside a container, and (slow, with podman)
the image builds, comes up healthy behind its published port and answers what the model says.

The slow test follows docs/containers.md step by step: a stand-in for python:3.11-slim made
with debootstrap (cached per machine), a build that mounts the host's pip config, CA bundle and
local package folders, runc with cgroupfs, slirp4netns networking and raised ulimits.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from dockerfile_parse import DockerfileParser
from submission_fixtures import DOCKERFILE, ROOT, make_artifact, random_images

from avc_common.artifact import load_artifact
from avc_common.rpc.client import DefenseClient, DefenseError
from avc_common.tensors import to_model_input
from defense.batcher import classify
from defense.process import ServerProcess, free_port, wait_serving
from defense.submission.check import local_command
from defense.submission.manifest import option, read_command

BASE_IMAGE = "python:3.11-slim"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trades-avc"
REAL_ARTIFACT = ROOT / "runs" / "fmnist-trades" / "artifact"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("art") / "artifact")


def _instructions() -> dict[str, list[str]]:
    """Instruction name -> the values of every such instruction in the Dockerfile."""
    found: dict[str, list[str]] = {}
    for item in DockerfileParser(path=str(DOCKERFILE)).structure:
        found.setdefault(item["instruction"], []).append(item["value"])
    return found


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    assert hadolint, "hadolint is a test dependency: pip install -e '.[test]'"
    run = subprocess.run([hadolint, "-f", "json", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout.strip()) == (0, "[]"), run.stdout + run.stderr


def test_dockerfile_serves_cpu_torch_as_non_root_with_a_health_check():
    found = _instructions()
    assert DockerfileParser(path=str(DOCKERFILE)).baseimage == BASE_IMAGE
    assert "TORCH=torch==2.13.0+cpu" in found["ARG"] and "ARTIFACT=artifact" in found["ARG"]
    assert found["EXPOSE"] == ["50051"]
    assert found["USER"][-1].split(":")[0] not in ("0", "root")
    assert '"defense.health", "--target", "127.0.0.1:50051"' in found["HEALTHCHECK"][0]
    entrypoint, _, _ = read_command(DOCKERFILE)
    assert option(entrypoint, "--model") == "/opt/defense/model" and option(entrypoint, "--port") == "50051"
    pins = [line for line in (ROOT / "requirements-server.txt").read_text().splitlines() if line and line[0] != "#"]
    assert all("==" in line for line in pins), pins
    assert not {"torch", "torchvision", "timm", "tqdm", "matplotlib"} & {line.split("==")[0] for line in pins}


def test_entrypoint_and_healthcheck_run_outside_a_container(artifact):
    """The Dockerfile's exact command (its python -> ours, model path -> the artifact, a free loopback
    port) serves; the HEALTHCHECK command, pointed at it, passes; the labels are the model's."""
    entrypoint, cmd, _ = read_command(DOCKERFILE)
    port = free_port()
    health = json.loads(_instructions()["HEALTHCHECK"][0].split(" CMD ", 1)[1])
    health = [sys.executable, *health[1:]]
    health[health.index("--target") + 1] = f"127.0.0.1:{port}"
    images = random_images(50)
    with ServerProcess(local_command(entrypoint + cmd, artifact, port), cwd=ROOT) as server:
        wait_serving(server, f"127.0.0.1:{port}", timeout_s=120)
        probe = subprocess.run(health, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert probe.returncode == 0 and "SERVING" in probe.stdout, probe.stdout + probe.stderr
        with DefenseClient(f"127.0.0.1:{port}", timeout_s=30) as client:
            assert np.array_equal(client.predict(images), classify(load_artifact(artifact).model, images))
        assert server.stop() == 0, server.log_tail()
    probe = subprocess.run(health, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert probe.returncode == 1 and "connection refused" in probe.stderr, probe.stderr


# ---- the faithful check: podman (slow) ----------------------------------------------------------

LOGITS_SCRIPT = """
import importlib, importlib.util, io, json, os, pkgutil, sys
import numpy as np, torch
from avc_common.artifact import load_artifact
from avc_common.tensors import to_model_input
images = np.load(io.BytesIO(sys.stdin.buffer.read()))
x = to_model_input(images)
out = {"torch": torch.__version__, "uid": os.getuid(), "logits": {}, "unimportable": {},
       "absent": [m for m in ("torchvision", "timm", "tqdm", "matplotlib", "yaml", "PIL")
                  if not importlib.util.find_spec(m)]}
for package in ("avc_common", "defense"):  # every module the image copies imports with its requirements alone
    for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
        if info.name.endswith(".__main__"):  # importing it runs the command
            continue
        try:
            importlib.import_module(info.name)
        except Exception as err:
            out["unimportable"][info.name] = repr(err)
for path in sys.argv[1:]:
    with torch.inference_mode():
        out["logits"][path] = load_artifact(path).model(x).tolist()
print(json.dumps(out))
"""


class Podman:
    """podman with the flags docs/containers.md found necessary here, over a throw-away store in ``ctr``."""

    ULIMITS = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768")

    def __init__(self, ctr: Path) -> None:
        self.ctr = ctr
        self.base = ["podman", "--root", str(ctr / "root"), "--runroot", str(ctr / "run"), "--storage-driver",
                     "overlay", "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--runtime", "runc"]

    def __call__(self, *args: str, timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        run = subprocess.run([*self.base, *args], capture_output=True, timeout=timeout, **kwargs)
        if check and run.returncode:
            out = run.stdout if isinstance(run.stdout, str) else run.stdout.decode(errors="replace")
            err = run.stderr if isinstance(run.stderr, str) else run.stderr.decode(errors="replace")
            pytest.fail(f"podman {' '.join(args[:3])} ... exited {run.returncode}:\n{out[-3000:]}\n{err[-3000:]}")
        return run


def _standin_base(podman: Podman) -> None:
    """Import the debootstrapped stand-in for python:3.11-slim, made once per machine and cached as a tar."""
    tar = CACHE / "python-3.11-slim-standin.tar"
    if not tar.is_file():
        rootfs = podman.ctr / "rootfs"
        run = subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,python3-pip,"
                              "ca-certificates", "bookworm", str(rootfs)], capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, f"debootstrap failed:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
        (rootfs / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)
        for name, target in (("python", "/usr/bin/python3"), ("pip", "/usr/bin/pip3")):
            (rootfs / "usr/local/bin" / name).unlink(missing_ok=True)
            (rootfs / "usr/local/bin" / name).symlink_to(target)
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = tar.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True, timeout=600)
        partial.rename(tar)
        shutil.rmtree(rootfs)
    podman("import", "--change", 'CMD ["python3"]', "--change", "ENV LANG=C.UTF-8", str(tar),
           f"docker.io/library/{BASE_IMAGE}", timeout=600)


def _pip_mounts(ctr: Path) -> list[str]:
    """``-v`` flags so that pip inside the build sees the host's package sources: the CA bundle, an INI
    made from ``pip config list``, and every local file or folder it names (a PEP 503 index's files lie
    beside its simple/ folder, so that folder's parent is mounted)."""
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             check=True).stdout
    options, paths = {}, {Path("/etc/ssl/certs/ca-certificates.crt")}
    for line in listing.splitlines():
        key, _, value = line.partition("=")
        value = value.strip().strip("'\"")
        options[key.split(".", 1)[1]] = value
        for token in value.split():
            path = Path(token.removeprefix("file://"))
            if path.is_absolute() and path.exists():
                paths.add(path.parent if path.name == "simple" else path)
    (ctr / "pip.conf").write_text("[global]\n" + "".join(f"{k} = {v}\n" for k, v in options.items()))
    mounts = ["-v", f"{ctr / 'pip.conf'}:/etc/pip.conf:ro"]  # the CA bundle is among the paths
    for path in sorted(paths):
        mounts += ["-v", f"{path}:{path}:ro"]
    return mounts


def _wait_healthy(podman: Podman, name: str, target: str, timeout_s: float) -> None:
    """Poll the health service through the published port; on timeout, fail with the container's log."""
    with DefenseClient(target, timeout_s=2, retries=0) as client:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if client.health() == "SERVING":
                    return
            except DefenseError:
                pass
            time.sleep(1)
    logs = podman("logs", name, check=False, text=True)
    pytest.fail(f"{target} not SERVING after {timeout_s} s; container log:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed (.ci/run installs it)")
def test_image_builds_runs_and_classifies_through_the_published_port(tmp_path):
    if os.geteuid() != 0 and not (CACHE / "python-3.11-slim-standin.tar").is_file():
        pytest.skip("making the stand-in base image needs root (debootstrap)")
    name = f"defense-test-{os.getpid()}"
    context_artifact = ROOT / "runs" / name / "artifact"  # in the real build context; .dockerignore keeps it
    ctr = Path(tempfile.mkdtemp(prefix="ctr-"))
    podman = Podman(ctr)
    try:
        make_artifact(context_artifact)
        _standin_base(podman)
        image = f"localhost/defense-server:{name}"
        # No route to download.pytorch.org here: the CPU wheel comes from the mounted local folder.
        podman("build", "--pull=never", "--network", "host", "--format", "docker", *Podman.ULIMITS, *_pip_mounts(ctr),
               "--build-arg", f"ARTIFACT=runs/{name}/artifact", "--build-arg", "TORCH_INDEX=",
               "-t", image, str(ROOT), timeout=1500)
        size = int(podman("image", "inspect", "--format", "{{.Size}}", image, text=True).stdout)
        assert size < 1.5e9, f"image is {size / 1e9:.2f} GB"

        port = free_port()
        podman("run", "-d", "--name", name, "--network", "slirp4netns", "-p", f"127.0.0.1:{port}:50051",
               *Podman.ULIMITS, image)
        _wait_healthy(podman, name, f"127.0.0.1:{port}", timeout_s=180)
        assert podman("healthcheck", "run", name, check=False).returncode == 0  # the HEALTHCHECK, inside
        model = load_artifact(context_artifact).model
        images = random_images(64, seed=7)
        with DefenseClient(f"127.0.0.1:{port}", timeout_s=60) as client:
            assert client.info().model.shape == (28, 28, 1)
            assert np.array_equal(client.predict(images), classify(model, images))
        podman("stop", "-t", "30", name)
        assert podman("inspect", "--format", "{{.State.ExitCode}}", name, text=True).stdout.strip() == "0"

        # The image's torch (2.13 CPU) on models exported by this environment's torch: same logits.
        buffer = io.BytesIO()
        np.save(buffer, images)
        mounts, paths = [], ["/opt/defense/model"]
        if REAL_ARTIFACT.is_dir():  # `make train-fmnist-trades`'s, copied: its files may be private to root (mode 0600)
            readable = shutil.copytree(REAL_ARTIFACT, tmp_path / "real", copy_function=shutil.copyfile)
            mounts, paths = ["-v", f"{readable}:/mnt/real:ro"], paths + ["/mnt/real"]
        run = podman("run", "--rm", "-i", "--network", "none", *Podman.ULIMITS, *mounts, "--entrypoint", "python",
                     image, "-c", LOGITS_SCRIPT, *paths, input=buffer.getvalue(), timeout=300)
        found = json.loads(run.stdout)
        assert found["torch"] == "2.13.0+cpu" and found["uid"] != 0
        assert found["absent"] == ["torchvision", "timm", "tqdm", "matplotlib", "yaml", "PIL"]
        assert found["unimportable"] == {}
        x = to_model_input(images)
        for path, local in zip(paths, [context_artifact, REAL_ARTIFACT]):
            with torch.inference_mode():
                expected = load_artifact(local).model(x)
            assert torch.allclose(torch.tensor(found["logits"][path]), expected, rtol=0, atol=1e-5), path
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)
        podman("system", "reset", "--force", check=False, timeout=300)
        shutil.rmtree(ctr, ignore_errors=True)
        shutil.rmtree(context_artifact.parent, ignore_errors=True)
