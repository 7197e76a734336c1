"""Regenerate the committed Python stubs from ``defense.proto`` with grpcio-tools.

The include root is the repository root and the file is named ``proto/defense.proto``,
so protoc writes ``proto/defense_pb2*.py`` and the gRPC module imports
``from proto import defense_pb2``: importable as the ``proto`` package, no path hacks.

Usage: ``python proto/generate.py [OUT_DIR]`` (default: the repository root).
"""
from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = "proto/defense.proto"
OUTPUTS = ("defense_pb2.py", "defense_pb2.pyi", "defense_pb2_grpc.py")


def generate(out_dir: str | Path = ROOT) -> list[Path]:
    """Write the stubs under ``out_dir/proto/`` and return their paths."""
    out_dir = Path(out_dir)
    (out_dir / "proto").mkdir(parents=True, exist_ok=True)
    args = ["grpc_tools.protoc", f"-I{ROOT}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}", str(ROOT / PROTO)]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    return [out_dir / "proto" / name for name in OUTPUTS]


if __name__ == "__main__":
    for path in generate(sys.argv[1] if len(sys.argv) > 1 else ROOT):
        print(path)
