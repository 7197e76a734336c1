"""The committed stubs are exactly what grpcio-tools makes of ``proto/defense.proto``."""
from __future__ import annotations

from pathlib import Path

import pytest

from proto.generate import OUTPUTS, ROOT, generate


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> dict[str, Path]:
    return {path.name: path for path in generate(tmp_path_factory.mktemp("stubs"))}


@pytest.mark.parametrize("name", OUTPUTS)
def test_committed_stubs_match_the_proto(fresh, name):
    assert fresh[name].read_bytes() == (ROOT / "proto" / name).read_bytes(), (
        f"proto/{name} is stale: run `python proto/generate.py` and commit the result")


def test_stubs_import_as_a_package():
    from proto import defense_pb2, defense_pb2_grpc

    service = defense_pb2.DESCRIPTOR.services_by_name["Defense"]
    assert service.full_name == "defense.v1.Defense"
    assert [m.name for m in service.methods] == ["ModelInfo", "Predict"]
    assert hasattr(defense_pb2_grpc, "DefenseStub")
