"""One gRPC health probe (``grpc.health.v1``): exit 0 iff the server reports SERVING.

The container's ``HEALTHCHECK`` runs ``python -m defense.health``, not ``python -m defense
health``: this module imports grpc only (about 0.3 s and 45 MB), where the full CLI imports
torch (seconds and hundreds of MB, every probe interval, inside the server's memory limit).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from avc_common.rpc.client import DefenseClient, DefenseError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The probe's flags, shared by this module's own CLI and ``python -m defense health``."""
    parser.add_argument("--target", default="127.0.0.1:50051", help="server address, host:port")
    parser.add_argument("--timeout-s", metavar="SECONDS", type=float, default=5.0,
                        help="give up (exit 1) when no answer comes within this time")
    parser.add_argument("--service", default="", help='health service name ("" = the whole server)')


def probe(args: argparse.Namespace) -> int:
    """Print the serving status; 0 iff SERVING, 1 for any other status or no answer."""
    try:
        with DefenseClient(args.target, timeout_s=args.timeout_s, retries=0, concurrency=1) as client:
            status = client.health(args.service)
    except DefenseError as err:
        print(f"{args.target}: {err}", file=sys.stderr)
        return 1
    print(f"{args.target}: {status}")
    return 0 if status == "SERVING" else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m defense.health", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser)
    return probe(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
