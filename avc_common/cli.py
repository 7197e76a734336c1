"""The command-line vocabulary every command shares, so a flag means the same thing everywhere.

``--data DIR`` is always a folder of images (``--dataset NAME`` says which kind where a
command needs to know), ``--output DIR`` the output folder, ``--json PATH`` "also write the
JSON summary here", ``--device`` one of auto/cpu/cuda/cuda:N checked against this machine,
``--threads N`` torch's intra-op threads and ``--progress/--no-progress`` the progress bars.
Numbers are range-checked while parsing, so a bad value exits 2 with the flag and the
allowed range before any work starts (argparse's own error exit).

Imports only the standard library at module level: ``python -m defense.health`` uses these
types without paying for torch, which :func:`device` imports when it is called.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from avc_common.atomic import atomic_write_text

if TYPE_CHECKING:
    import torch

STDOUT = "-"  # ``--json -``: the JSON goes to standard output and the text summary to standard error


def program(run_as: str) -> str:
    """argparse's ``prog``: the console script's name (``avc-train``) when run as one, else ``run_as``, the
    documented command (``python training/train_tiny.py``; argparse alone would say ``train_tiny.py``)."""
    name = Path(sys.argv[0]).name
    return run_as if not name or name.endswith(".py") else name


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default except None (there the help says what happens without the flag);
    keeps a description's own line breaks (the commands use their docstrings)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default is None else super()._get_help_string(action)


def number(kind: Callable[[str], Any], minimum: float, maximum: float | None = None, *,
           above: bool = False) -> Callable[[str], Any]:
    """An argparse ``type``: ``kind(text)`` if finite and within [minimum, maximum] (``above``: > minimum).

    The error names the allowed range; argparse prefixes the flag and exits 2.
    """
    noun = "an integer" if kind is int else "a number"
    if maximum is None:
        expected = f"{noun} {'>' if above else '>='} {minimum}"
    else:
        expected = f"{noun} in {'(' if above else '['}{minimum}, {maximum}]"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < minimum or (above and value == minimum) \
                or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


def at_least(minimum: float, kind: Callable[[str], Any] = int) -> Callable[[str], Any]:
    """An argparse ``type`` that parses ``kind`` and refuses values below ``minimum``."""
    return number(kind, minimum)


positive_int = at_least(1)
non_negative_int = at_least(0)
positive_float = number(float, 0.0, above=True)
non_negative_float = at_least(0.0, float)
fraction = number(float, 0.0, 1.0)
port = number(int, 0, 65535)


def device(text: str) -> torch.device:
    """An argparse ``type``: ``auto`` (cuda if available, else cpu), ``cpu``, ``cuda`` or ``cuda:N``,
    refused at parse time when this machine has no such device."""
    import torch

    name = text.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    chosen = torch.device(name)
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: CUDA is not available on this machine (use cpu or auto)")
        count = torch.cuda.device_count()
        if chosen.index is not None and chosen.index >= count:
            raise argparse.ArgumentTypeError(f"{text}: this machine has {count} CUDA device(s), "
                                             f"cuda:0..cuda:{count - 1}")
    return chosen


def add_device(parser: argparse._ActionsContainer, default: str = "auto", what: str = "the model") -> None:
    """``--device``: where ``what`` runs."""
    parser.add_argument("--device", type=device, default=default,
                        help=f"torch device for {what}: auto (cuda if available, else cpu), cpu, cuda or cuda:N")


def add_threads(parser: argparse._ActionsContainer, default: int = 0, why: str = "") -> None:
    """``--threads N``: torch's intra-op CPU threads; 0 leaves torch's default (see :func:`set_threads`)."""
    parser.add_argument("--threads", metavar="N", type=non_negative_int, default=default,
                        help=f"torch CPU threads (0 = torch's default){why}")


def set_threads(threads: int) -> None:
    """Apply ``--threads``: 0 keeps torch's default."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def add_progress(parser: argparse._ActionsContainer) -> None:
    """``--progress/--no-progress`` (``args.progress``): progress bars, on unless turned off (e.g. in logs)."""
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show progress bars (--no-progress for logs)")


def add_data(parser: argparse._ActionsContainer, help: str, default: Path | None = None) -> None:
    """``--data DIR``: the folder the images are read from."""
    parser.add_argument("--data", type=Path, metavar="DIR", default=default, help=help)


def writable(folder: bool) -> Callable[[str], Path]:
    """An argparse type: a path this process can write as a folder (``folder``) or a file (``-``: standard output).

    Checked while parsing, because writing fails only once the work is done (``--json``) or after
    the data and model are loaded (``--output``): a file where a folder is wanted or the reverse, a
    file in the way higher up, or no permission to write where it would be created.
    """
    kind = "a folder" if folder else "a file"

    def check(text: str) -> Path:
        path = Path(text)
        if not folder and text == STDOUT:
            return path
        if path.exists() and path.is_dir() != folder:
            raise argparse.ArgumentTypeError(f"expected {kind}, but {path} is {'a file' if folder else 'a folder'}")
        parent = next(p for p in path.absolute().parents if p.exists())  # where it would be created
        if not parent.is_dir():
            raise argparse.ArgumentTypeError(f"expected {kind} path, but {parent} is a file")
        where = path if path.exists() else parent
        if not os.access(where, os.W_OK):
            raise argparse.ArgumentTypeError(f"cannot write to {where} (permission denied)")
        return path

    return check


def add_output(parser: argparse._ActionsContainer, default: Path, holds: str) -> argparse.Action:
    """``--output DIR``: the folder ``holds`` is written to (checked writable while parsing, the default too);
    returns the action (for :func:`add_alias`)."""
    return parser.add_argument("--output", type=writable(folder=True), metavar="DIR", default=str(default),
                               help=f"{holds} go here")


def add_json(parser: argparse._ActionsContainer, what: str = "the JSON summary") -> None:
    """``--json PATH``: also write ``what`` there (``-``: to standard output, see :func:`write_json`)."""
    parser.add_argument("--json", type=writable(folder=False), metavar="PATH", default=None,
                        help=f"also write {what} here (- = standard output; the text summary then goes to "
                             f"standard error)")


def write_json(path: Path | None, text: str) -> None:
    """Honour ``--json``: nothing for None, standard output for ``-``, else an atomic write."""
    if path is None:
        return
    if str(path) == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write_text(path, text)


def text_stream(json_path: Path | None) -> TextIO:
    """Where the human-readable summary goes: standard error when ``--json -`` takes standard output."""
    return sys.stderr if json_path is not None and str(json_path) == STDOUT else sys.stdout


class _Alias(argparse.Action):
    """A hidden old spelling of a flag: stores into the new flag's ``dest`` and says it is deprecated."""

    def __init__(self, option_strings: list[str], dest: str, replacement: str = "", **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.replacement = replacement

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"{parser.prog}: note: {option_string} is deprecated, use {self.replacement}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_alias(parser: argparse._ActionsContainer, old: str, new: argparse.Action) -> None:
    """Accept ``old`` as a deprecated, undocumented spelling of the flag ``new``."""
    parser.add_argument(old, dest=new.dest, type=new.type, metavar=new.metavar, action=_Alias,
                        replacement=new.option_strings[0], default=argparse.SUPPRESS, help=argparse.SUPPRESS)
