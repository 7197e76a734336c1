"""``python -m defense serve``: serve a model artifact as the label-only gRPC service.

Loads the artifact (a folder that is not one, or whose model does not match its manifest,
exits 2), listens on --host:--port (loopback unless told otherwise) and answers Predict,
ModelInfo, health and reflection until SIGTERM or SIGINT, then lets in-flight calls finish
for --grace-s and exits 0 (1 if the address cannot be bound). The container's ENTRYPOINT runs
exactly this command, with --host 0.0.0.0.

Where other machines reach it, serve TLS (--tls-cert, --tls-key; --tls-client-ca for mutual
TLS) to named callers (--callers), each with its own query budget: docs/grpc.md "Security".
Unusable certificates, keys or callers file exit 2 before the model is loaded.

--metrics-port serves Prometheus metrics over plain HTTP (docs/grpc.md "Metrics"), on --host's
address unless --metrics-host says otherwise; --log-format json writes one JSON object per line.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

import torch

from avc_common.artifact import ArtifactError, load_artifact
from avc_common.cli import (
    add_device,
    add_threads,
    non_negative_float,
    non_negative_int,
    port,
    positive_int,
    set_threads,
)
from avc_common.images import ImageShape
from avc_common.rpc.credentials import CredentialsError, ServerTls
from defense import limits
from defense.callers import Caller, CallersError, load_callers
from defense.json_log import JsonFormatter
from defense.server import ServerConfig, serve

DEFAULTS = ServerConfig()
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The server's flags (``python -m defense serve`` and ``avc-serve``)."""
    p.add_argument("--model", required=True, metavar="DIR", help="model artifact folder (model.pt2 + manifest.json)")
    p.add_argument("--host", default=DEFAULTS.host,
                   help="address to listen on: loopback, this machine only, unless set (0.0.0.0: every interface, "
                        "as the container passes; then serve TLS to named callers, see --tls-cert and --callers)")
    p.add_argument("--port", type=port, default=DEFAULTS.port, help="port to listen on (0 = any free port)")
    p.add_argument("--max-images-per-request", metavar="N", type=positive_int, default=DEFAULTS.max_images_per_request,
                   help="most images one Predict may carry; larger requests are refused")
    p.add_argument("--max-batch-size", metavar="N", type=positive_int, default=DEFAULTS.max_batch_size,
                   help="most images in one model forward; a batch closes when this full")
    p.add_argument("--max-delay-ms", metavar="MS", type=non_negative_float, default=DEFAULTS.max_delay_ms,
                   help="longest a request waits for others to fill its batch")
    p.add_argument("--query-budget", metavar="IMAGES", type=non_negative_int, default=DEFAULTS.query_budget,
                   help="total images the server will classify, for all callers together, then RESOURCE_EXHAUSTED "
                        "(0 = unlimited); with --callers each caller's own budget is in the file instead")
    mib = DEFAULTS.memory_mib  # the derived defaults, worked out for the help
    calls = limits.default_max_concurrent_calls(mib)
    fmnist = limits.default_max_queued_images(ImageShape(28, 28, 1), mib)
    p.add_argument("--memory-mib", metavar="MIB", type=positive_int, default=DEFAULTS.memory_mib,
                   help="the memory the server is given (crisp.yaml declares resources.memory: 4Gi); the next two "
                        "caps are derived from it. Half is for the process itself, a quarter for queued images, a "
                        "quarter for calls (defense/limits.py, docs/grpc.md \"Load and shutdown\")")
    p.add_argument("--max-concurrent-calls", metavar="N", type=positive_int, default=DEFAULTS.max_concurrent_calls,
                   help="most Predict calls waiting for labels at once; one more is refused with RESOURCE_EXHAUSTED "
                        f"and a retry hint, not charged (default: a quarter of --memory-mib at "
                        f"{limits.BYTES_PER_CALL // 1024} KiB a call, {calls} for {mib} MiB)")
    p.add_argument("--max-queued-images", metavar="N", type=positive_int, default=DEFAULTS.max_queued_images,
                   help="most images waiting for the model; a Predict that would pass it is refused with "
                        "RESOURCE_EXHAUSTED and a retry hint, not charged (default: a quarter of --memory-mib over "
                        f"{limits.COPIES_PER_QUEUED_IMAGE} copies of the model's image, H x W x C bytes each: "
                        f"{fmnist} for 28 x 28 x 1 at {mib} MiB; never below --max-images-per-request or "
                        f"--max-batch-size)")
    add_threads(p)
    add_device(p, default="cpu")  # the container's CMD passes --device cpu; a GPU image passes --device cuda
    p.add_argument("--grace-s", metavar="SECONDS", type=non_negative_float, default=DEFAULTS.grace_s,
                   help="on SIGTERM/SIGINT, how long in-flight calls may take to finish (health says NOT_SERVING and "
                        "new calls get UNAVAILABLE meanwhile); the server exits as soon as they have")
    p.add_argument("--stats-file", metavar="PATH", type=Path, default=DEFAULTS.stats_file,
                   help="also keep the cumulative counters in this JSON file (fields: defense/stats.py), rewritten "
                        "about once a second while there is traffic, at shutdown and on SIGUSR1")
    s = p.add_argument_group("security (docs/grpc.md \"Security\")")
    s.add_argument("--tls-cert", metavar="PEM", type=Path, default=None,
                   help="serve TLS with this certificate chain (PEM), with --tls-key (default: plaintext, for a "
                        "loopback --host or a network that only trusted machines reach)")
    s.add_argument("--tls-key", metavar="PEM", type=Path, default=None,
                   help="the unencrypted private key (PEM) of --tls-cert")
    s.add_argument("--tls-client-ca", metavar="PEM", type=Path, default=None,
                   help="mutual TLS: refuse every client without a certificate signed by this CA (PEM); needs "
                        "--tls-cert (default: no client certificates asked for)")
    s.add_argument("--callers", metavar="FILE", type=Path, default=None,
                   help="a JSON file of named callers, each with the sha256 of its bearer token and its own query "
                        "budget; a call without one of their tokens gets UNAUTHENTICATED (default: anyone may call, "
                        "one --query-budget for all; docs/grpc.md \"Security\" makes a token and its hash)")
    s.add_argument("--reflection", action=argparse.BooleanOptionalAction, default=DEFAULTS.reflection,
                   help="serve gRPC server reflection, which answers without a token (default: on without "
                        "--callers, off with them)")
    o = p.add_argument_group("observability (docs/grpc.md \"Metrics\")")
    o.add_argument("--metrics-port", metavar="PORT", type=port, default=DEFAULTS.metrics_port,
                   help="serve Prometheus metrics over plain HTTP on this port, at /metrics (0 = any free port, "
                        "logged at the start; default: no metrics, no port opened)")
    o.add_argument("--metrics-host", metavar="HOST", default=DEFAULTS.metrics_host,
                   help="address the metrics listen on (default: --host's, loopback unless set); they answer "
                        "anyone who reaches them, without TLS or a token")
    o.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="logging level (INFO: one throughput line per second of traffic)")
    o.add_argument("--log-format", default="text", choices=["text", "json"],
                   help="text: one line for people per event; json: one JSON object per line with time, level, "
                        "logger, message and the event's fields (defense/json_log.py)")


def security(args: argparse.Namespace) -> tuple[ServerTls | None, tuple[Caller, ...] | None]:
    """The TLS files and the callers, read and checked; CredentialsError or CallersError naming the flag."""
    if args.tls_cert is None:
        given = next((flag for flag, value in (("--tls-key", args.tls_key), ("--tls-client-ca", args.tls_client_ca))
                      if value is not None), None)
        if given:
            raise CredentialsError(f"{given}: only with --tls-cert (the server's certificate chain)")
        tls = None
    elif args.tls_key is None:
        raise CredentialsError("--tls-cert: needs --tls-key, its private key")
    else:
        tls = ServerTls.load(args.tls_cert, args.tls_key, args.tls_client_ca)
    if args.callers is None:
        return tls, None
    if args.query_budget:
        raise CallersError(f"--query-budget: expected 0 with --callers (each caller's query_budget is in "
                           f"{args.callers}), got {args.query_budget}")
    return tls, load_callers(args.callers)


def run(args: argparse.Namespace) -> int:
    """Serve until a signal; 0 after a clean drain, 2 for a bad artifact, caps, TLS files or callers file, 1 if the
    address cannot be bound."""
    floor = max(args.max_images_per_request, args.max_batch_size)
    if args.max_queued_images is not None and args.max_queued_images < floor:
        print(f"error: --max-queued-images: expected at least {floor} (--max-images-per-request and --max-batch-size: "
              f"a full request or batch must fit the queue), got {args.max_queued_images}", file=sys.stderr)
        return 2
    if args.metrics_port and args.metrics_port == args.port:
        print(f"error: --metrics-port: expected a port other than --port's ({args.port}), got {args.metrics_port}",
              file=sys.stderr)
        return 2
    try:
        tls, callers = security(args)
    except (CredentialsError, CallersError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if args.log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=args.log_level, handlers=[handler])
    set_threads(args.threads)
    torch.backends.fp32_precision = "ieee"  # true fp32 on every device (no TF32): labels as exported
    try:
        artifact = load_artifact(args.model, args.device)
    except ArtifactError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    config = ServerConfig(host=args.host, port=args.port, max_images_per_request=args.max_images_per_request,
                          max_batch_size=args.max_batch_size, max_delay_ms=args.max_delay_ms,
                          query_budget=args.query_budget, grace_s=args.grace_s, stats_file=args.stats_file,
                          memory_mib=args.memory_mib, max_concurrent_calls=args.max_concurrent_calls,
                          max_queued_images=args.max_queued_images, tls=tls, callers=callers,
                          reflection=args.reflection, metrics_port=args.metrics_port, metrics_host=args.metrics_host)
    try:
        asyncio.run(serve(artifact, config, str(args.device)))
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
