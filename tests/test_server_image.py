"""The server image imports every module it copies with requirements-server.txt alone (no podman needed).

The Dockerfile's COPY lines minus .dockerignore give the modules the image holds; every import in them
must be the standard library, torch, a package pinned in requirements-server.txt, or another copied
module. The slow container test (tests/test_container.py) imports them all inside the built image.
"""
from __future__ import annotations

import ast
import fnmatch
import subprocess
import sys
from pathlib import Path

from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parent.parent
IMPORT_NAMES = {"grpcio": "grpc", "grpcio-health-checking": "grpc_health", "grpcio-reflection": "grpc_reflection",
                "protobuf": "google", "numpy": "numpy",
                "prometheus-client": "prometheus_client"}  # distribution -> the top-level name it installs


def copied_modules() -> list[Path]:
    """The .py files the Dockerfile copies into the image, relative to the repository root."""
    ignored = [line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith(("#", "!"))]
    sources = []
    for item in DockerfileParser(path=str(ROOT / "Dockerfile")).structure:
        if item["instruction"] == "COPY" and not item["value"].startswith("${"):
            sources += [s.rstrip("/") for s in item["value"].split()[:-1]]
    files = []
    for source in sources:
        for path in sorted((ROOT / source).rglob("*.py")) if (ROOT / source).is_dir() else []:
            rel = path.relative_to(ROOT)
            parents = [rel.as_posix(), *(p.as_posix() for p in rel.parents)]
            if not any(fnmatch.fnmatch(part, pattern) for part in parents for pattern in ignored):
                files.append(rel)
    return files


def server_requirements() -> set[str]:
    pins = [line.split("==")[0] for line in (ROOT / "requirements-server.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    return {IMPORT_NAMES[p] for p in pins if p in IMPORT_NAMES} | {"torch"}


def imports_of(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, at any depth of the file."""
    names = set()
    for node in ast.walk(ast.parse((ROOT / path).read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_image_copies_the_server_and_the_common_ground_but_not_the_readers_or_the_check():
    modules = {p.as_posix() for p in copied_modules()}
    assert {"defense/server.py", "defense/cli.py", "avc_common/artifact.py", "avc_common/rpc/client.py"} <= modules
    assert not any(m.startswith(("avc_common/data/", "defense/submission/", "training/", "attacks/")) for m in modules)


def test_every_copied_module_imports_only_what_the_image_installs():
    modules = copied_modules()
    internal = {".".join(p.with_suffix("").parts).removesuffix(".__init__") for p in modules}
    allowed = server_requirements()
    bad = {}
    for path in modules:
        for name in imports_of(path):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top in allowed:
                continue
            if name not in internal and name.rsplit(".", 1)[0] not in internal:
                bad.setdefault(path.as_posix(), []).append(name)
    assert bad == {}, f"modules in the server image import what it lacks: {bad}"


def test_the_health_probe_does_not_import_torch():
    """The image's HEALTHCHECK runs `python -m defense.health` every 30 s: it must stay a light gRPC call."""
    code = ("import runpy, sys; sys.argv = ['x', '--help']\n"
            "try: runpy.run_module('defense.health', run_name='__main__')\n"
            "except SystemExit: pass\nprint('torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert run.returncode == 0 and run.stdout.strip().splitlines()[-1] == "False", run.stdout + run.stderr
