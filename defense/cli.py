"""``python -m defense``: serve a model artifact, probe a server's health, check a submission."""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Sequence

import torch

from avc_common.artifact import ArtifactError, load_artifact
from defense import health
from defense.server import ServerConfig, serve

DEFAULTS = ServerConfig()


def _at_least(minimum: float, kind: type = int):
    """An argparse ``type`` that parses ``kind`` and refuses values below ``minimum``."""

    def parse(text: str):
        value = kind(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value

    return parse


def _device(name: str) -> torch.device:
    """An argparse ``type``: a torch device that exists on this machine."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{name}: CUDA is not available on this machine")
    return device


def _add_serve(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("serve", help="serve an artifact as the label-only gRPC service",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, metavar="DIR",
                   help="model artifact folder (model.pt2 + manifest.json)")
    p.add_argument("--host", default=DEFAULTS.host, help="address to listen on")
    p.add_argument("--port", type=_at_least(0), default=DEFAULTS.port,
                   help="port to listen on (0 = any free port)")
    p.add_argument("--max-images-per-request", metavar="N", type=_at_least(1),
                   default=DEFAULTS.max_images_per_request, help="most images one Predict may carry; larger requests are refused")
    p.add_argument("--max-batch-size", metavar="N", type=_at_least(1), default=DEFAULTS.max_batch_size,
                   help="most images in one model forward; a batch closes when this full")
    p.add_argument("--max-delay-ms", metavar="MS", type=_at_least(0, float), default=DEFAULTS.max_delay_ms,
                   help="longest a request waits for others to fill its batch")
    p.add_argument("--query-budget", metavar="IMAGES", type=_at_least(0), default=DEFAULTS.query_budget,
                   help="total images the server will classify, then RESOURCE_EXHAUSTED (0 = unlimited)")
    p.add_argument("--threads", metavar="N", type=_at_least(0), default=0,
                   help="torch intra-op threads for the model (0 = torch's default)")
    p.add_argument("--device", type=_device, default="cpu", help="torch device for the model: cpu, cuda or cuda:N")
    p.add_argument("--grace-s", metavar="SECONDS", type=_at_least(0, float), default=DEFAULTS.grace_s,
                   help="on SIGTERM/SIGINT, how long in-flight calls may take to finish")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="logging level (INFO: one throughput line per second of traffic)")
    p.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.fp32_precision = "ieee"  # true fp32 on every device (no TF32): labels as exported
    try:
        artifact = load_artifact(args.model, args.device)
    except ArtifactError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    config = ServerConfig(host=args.host, port=args.port, max_images_per_request=args.max_images_per_request,
                          max_batch_size=args.max_batch_size, max_delay_ms=args.max_delay_ms,
                          query_budget=args.query_budget, grace_s=args.grace_s)
    try:
        asyncio.run(serve(artifact, config, str(args.device)))
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default except None (there the help says what happens without the option)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default is None else super()._get_help_string(action)


def _add_health(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("health", help="probe a server's gRPC health service: exit 0 iff SERVING",
                            description="Ask a server's grpc.health.v1 service once: exit 0 iff SERVING, 1 otherwise.",
                            formatter_class=_HelpWithDefaults)
    health.add_arguments(p)
    p.set_defaults(run=health.probe)


def _add_check(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("check", help="validate crisp.yaml and test the submission as the competition would",
                            description="Validate a submission manifest, serve its artifact exactly as its container "
                            "would and check it. Exit 0: passed; 1: a check failed; 2: invalid manifest or arguments.",
                            formatter_class=_HelpWithDefaults)
    p.add_argument("manifest", nargs="?", default="crisp.yaml", help="the submission manifest")
    p.add_argument("--images", metavar="DIR", default=None,
                   help="evaluation images: .npy uint8 HWC files + labels.yml (default: 32 built-in random images)")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the report as JSON here")
    p.add_argument("--timeout-s", metavar="SECONDS", type=_at_least(1, float), default=120.0,
                   help="how long the server may take to report SERVING")
    p.add_argument("--throughput-images", metavar="N", type=_at_least(0), default=512,
                   help="images classified to measure throughput (0 = skip)")
    p.set_defaults(run=_check)


def _check(args: argparse.Namespace) -> int:
    from defense.submission.check import (
        main as check,  # needs pyyaml and dockerfile-parse, which the server image lacks
    )

    return check(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m defense", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(commands)
    _add_health(commands)
    _add_check(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, set up logging and run the chosen subcommand; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "WARNING"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.run(args)
