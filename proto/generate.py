"""Regenerate the committed Python stubs of ``proto/defense.proto`` with grpcio-tools.

``proto/defense.proto`` is the source of truth; the stubs live in ``avc_common/rpc/`` so
that no top-level ``proto`` module is ever installed (that name belongs to proto-plus,
which every Google Cloud client library depends on). protoc's virtual include path
(``-Iavc_common/rpc=proto``) makes the generated gRPC module import
``from avc_common.rpc import defense_pb2``.

Usage: ``python proto/generate.py [OUT_DIR]`` (default: the repository root; needs the
``dev`` extra, which brings grpcio-tools; ``--help`` explains).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "avc_common/rpc"
PROTO = "defense.proto"
OUTPUTS = ("defense_pb2.py", "defense_pb2.pyi", "defense_pb2_grpc.py")


def generate(out_dir: str | Path = ROOT) -> list[Path]:
    """Write the stubs under ``out_dir/avc_common/rpc/`` and return their paths."""
    out_dir = Path(out_dir)
    (out_dir / PACKAGE).mkdir(parents=True, exist_ok=True)
    args = ["grpc_tools.protoc", f"-I{PACKAGE}={ROOT / 'proto'}", f"--python_out={out_dir}",
            f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}", f"{PACKAGE}/{PROTO}"]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on proto/{PROTO}")
    return [out_dir / PACKAGE / name for name in OUTPUTS]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python proto/generate.py", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", nargs="?", type=Path, default=ROOT, metavar="OUT_DIR",
                        help="where avc_common/rpc/ is written (default: the repository root, to commit the result)")
    for path in generate(parser.parse_args().out_dir):
        print(path)


if __name__ == "__main__":
    main()
