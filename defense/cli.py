"""``python -m defense``: serve a model artifact, probe a server's health, check a submission.

Each subcommand is a module with ``add_arguments(parser)`` and ``run(args) -> int``, imported
only when it is chosen: ``health`` then costs no torch import, and ``serve`` runs in the server
image, which lacks what ``check`` needs (PyYAML, dockerfile-parse). A subcommand whose optional
dependencies are missing exits 2 naming the extra to install.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

from avc_common.cli import HelpFormatter

PROG = "python -m defense"
FIRST_PARTY = ("avc_common", "defense", "training", "attacks")  # a failed import of these is a bug, not an extra


@dataclass(frozen=True)
class Command:
    """Where a subcommand lives, its one-line help, and the pip extra its imports need (None: the base install)."""

    module: str
    help: str
    extra: str | None


COMMANDS = {
    "serve": Command("defense.serve", "serve an artifact as the label-only gRPC service", "serve"),
    "health": Command("defense.health", "probe a server's gRPC health service: exit 0 iff SERVING", None),
    "check": Command("defense.submission.check",
                     "validate crisp.yaml and test the submission as the competition would", "check"),
}


def load(name: str, prog: str) -> ModuleType | None:
    """The subcommand's module; None (after one line on stderr naming the extra) if a dependency is missing."""
    command = COMMANDS[name]
    try:
        return importlib.import_module(command.module)
    except ImportError as err:
        if err.name is None or err.name.split(".")[0] in FIRST_PARTY:
            raise
        package = f"trades-avc[{command.extra}]" if command.extra else "trades-avc"
        print(f"{prog}: needs {err.name}, which is not installed: pip install '{package}'", file=sys.stderr)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, import only the chosen subcommand and run it; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0], formatter_class=HelpFormatter,
                                     epilog=f"`{PROG} COMMAND --help` shows a command's flags.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers = {name: subparsers.add_parser(name, help=c.help, formatter_class=HelpFormatter)
               for name, c in COMMANDS.items()}
    name = next((arg for arg in argv if not arg.startswith("-")), None)
    if name not in COMMANDS:
        parser.parse_args(argv)  # exits: the help, or the error for a missing or unknown command
    module = load(name, f"{PROG} {name}")
    if module is None:
        return 2
    parsers[name].description = module.__doc__
    module.add_arguments(parsers[name])
    return module.run(parser.parse_args(argv))


def run_command(name: str, prog: str, argv: Sequence[str] | None = None) -> int:
    """One subcommand as a program of its own (a console script): ``prog`` names it in usage and errors."""
    module = load(name, prog)
    if module is None:
        return 2
    parser = argparse.ArgumentParser(prog=prog, description=module.__doc__, formatter_class=HelpFormatter)
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


def serve_main(argv: Sequence[str] | None = None) -> int:
    """``avc-serve``: ``python -m defense serve`` under its own name."""
    return run_command("serve", "avc-serve", argv)


def check_main(argv: Sequence[str] | None = None) -> int:
    """``avc-check``: ``python -m defense check`` under its own name (a missing extra is one line, not a traceback)."""
    return run_command("check", "avc-check", argv)
