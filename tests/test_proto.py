"""The committed stubs are exactly what grpcio-tools makes of ``proto/defense.proto``, and live where no top-level
``proto`` module is installed (that name is proto-plus's, which every Google Cloud client library needs)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STUBS = ("defense_pb2.py", "defense_pb2.pyi", "defense_pb2_grpc.py")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """The stubs as `python proto/generate.py OUT` writes them (the documented command)."""
    out = tmp_path_factory.mktemp("stubs")
    subprocess.run([sys.executable, str(ROOT / "proto" / "generate.py"), str(out)], check=True, cwd=ROOT,
                   capture_output=True, timeout=120)
    return out / "avc_common" / "rpc"


@pytest.mark.parametrize("name", STUBS)
def test_committed_stubs_match_the_proto(fresh, name):
    assert (fresh / name).read_bytes() == (ROOT / "avc_common" / "rpc" / name).read_bytes(), (
        f"avc_common/rpc/{name} is stale: run `python proto/generate.py` and commit the result")


def test_stubs_import_from_the_common_package():
    from avc_common.rpc import defense_pb2, defense_pb2_grpc

    service = defense_pb2.DESCRIPTOR.services_by_name["Defense"]
    assert service.full_name == "defense.v1.Defense"
    assert [m.name for m in service.methods] == ["ModelInfo", "Predict"]
    assert hasattr(defense_pb2_grpc, "DefenseStub")


def test_no_top_level_proto_package_is_installed():
    """proto/ holds the .proto source and its generator script only: nothing there is importable as a package."""
    assert not (ROOT / "proto" / "__init__.py").exists()
    run = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(u.find_spec('proto'))"],
                         cwd="/", capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "None", run.stdout + run.stderr
