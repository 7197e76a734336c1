"""One gRPC health probe (``grpc.health.v1``): exit 0 iff the server reports SERVING.

The container's ``HEALTHCHECK`` runs ``python -m defense.health`` (``python -m defense health``
runs the same module, and imports no other subcommand): a probe should cost grpc's import only
(about 0.3 s and 45 MB), not torch's (seconds and hundreds of MB, every probe interval, inside
the server's memory limit).

Health needs no token, even on a server with named callers (the runtime's probe has none), but a
TLS server needs a TLS probe: ``--tls-ca`` (and, for mutual TLS, ``--tls-cert`` and ``--tls-key``),
given to the container's health command (docs/containers.md "TLS and callers").
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from avc_common.cli import HelpFormatter, positive_float, program
from avc_common.rpc.client import DefenseClient, DefenseError, ServerUnavailableError
from avc_common.rpc.credentials import CredentialsError, add_client_arguments, client_credentials


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The probe's flags, shared by this module's own CLI and ``python -m defense health``."""
    parser.add_argument("--target", default="127.0.0.1:50051", help="server address, host:port")
    parser.add_argument("--timeout-s", metavar="SECONDS", type=positive_float, default=5.0,
                        help="give up (exit 1) when no answer comes within this time")
    parser.add_argument("--service", default="", help='health service name ("" = the whole server)')
    add_client_arguments(parser, token=False)


def run(args: argparse.Namespace) -> int:
    """Print the serving status; 0 iff SERVING, 1 for any other status or no answer, 2 for unusable TLS files."""
    try:
        tls, _ = client_credentials(args)
    except CredentialsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        with DefenseClient(args.target, timeout_s=args.timeout_s, retries=0, concurrency=1, tls=tls) as client:
            status = client.health(args.service)
    except ServerUnavailableError as err:
        print(f"error: {err}", file=sys.stderr)  # it names the address and why there was no answer
        return 1
    except DefenseError as err:
        print(f"{args.target}: {err}", file=sys.stderr)
        return 1
    print(f"{args.target}: {status}")
    return 0 if status == "SERVING" else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m defense.health`` / ``avc-health``: one probe; the exit status."""
    parser = argparse.ArgumentParser(prog=program("python -m defense.health"), description=__doc__,
                                     formatter_class=HelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
