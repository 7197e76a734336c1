"""Who may call the server, and each caller's own query budget (``--callers FILE``, ``docs/grpc.md`` "Callers").

The file is JSON, one entry per named caller: the sha256 (hex) of its bearer token and its budget in
images over the server's lifetime (0 = unlimited)::

    {"team-a": {"token_sha256": "3a7bd3e2...", "query_budget": 100000},
     "team-b": {"token_sha256": "9f86d081...", "query_budget": 100000}}

Only hashes are kept, so a copy of the file gives no one a token. A call's ``authorization: Bearer
TOKEN`` is hashed and compared with every caller's hash with :func:`hmac.compare_digest`, all of them
every time, so the time a refusal takes says nothing about which hash, or how much of one, came close.
JSON, not YAML: the server image carries no YAML parser; a name given twice is refused, as the
project's YAML loader refuses a duplicate key, rather than the last entry silently winning.

Without a callers file every call is the one anonymous caller, with ``--query-budget`` for all.
"""
from __future__ import annotations

import hmac
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from avc_common.problems import Problem
from avc_common.rpc.credentials import AUTHORIZATION, BEARER, token_sha256
from defense.budget import QueryBudget
from defense.validation import RequestError

FIELDS = {"token_sha256", "query_budget"}
SHA256 = re.compile(r"[0-9a-f]{64}")
HASH_ONE_LINER = ("python -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1]).read().strip().encode())"
                  ".hexdigest())' TOKEN_FILE")


class CallersError(ValueError):
    """A callers file that cannot be used; the message lists every problem with its fix."""


@dataclass(frozen=True)
class Caller:
    """One entry of the callers file."""

    name: str
    token_sha256: str
    query_budget: int


@dataclass
class Account:
    """What a call is charged to: a caller's name ("" for the anonymous one) and its budget, live on the server."""

    name: str
    budget: QueryBudget


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise CallersError(f"{key!r} is given twice; each name (and each field of a caller) once")
        seen[key] = value
    return seen


def _problems(name: str, entry: Any) -> list[Problem]:
    where = f"callers.{name}"
    if not name:
        return [Problem(where, "a caller's name is empty", "name every caller (it appears in ModelInfo and the log)")]
    if not isinstance(entry, dict):
        return [Problem(where, f"expected an object, got {json.dumps(entry)}",
                        '{"token_sha256": "<64 hex digits>", "query_budget": IMAGES}')]
    problems = [Problem(f"{where}.{key}", "unknown field", f"the fields are {', '.join(sorted(FIELDS))}")
                for key in sorted(entry.keys() - FIELDS)]
    digest = entry.get("token_sha256")
    if not (isinstance(digest, str) and SHA256.fullmatch(digest)):
        problems.append(Problem(f"{where}.token_sha256", f"expected 64 lower-case hex digits, got {json.dumps(digest)}",
                                f"the sha256 of the caller's token, never the token itself: {HASH_ONE_LINER}"))
    budget = entry.get("query_budget")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        problems.append(Problem(f"{where}.query_budget", f"expected an integer >= 0, got {json.dumps(budget)}",
                                "the images this caller may have classified (0 = unlimited)"))
    return problems


def load_callers(path: Path) -> tuple[Caller, ...]:
    """The callers in ``path``, checked; :class:`CallersError` naming every problem at once."""
    try:
        table = json.loads(path.read_text(), object_pairs_hook=_unique)
    except OSError as err:
        raise CallersError(f"--callers {path}: cannot read it ({err.strerror or err})") from None
    except (ValueError, UnicodeDecodeError) as err:  # CallersError (a duplicate) and JSONDecodeError are ValueErrors
        raise CallersError(f"--callers {path}: expected JSON, one object of named callers: {err}") from None
    if not isinstance(table, dict) or not table:
        raise CallersError(f"--callers {path}: expected an object of one or more named callers, e.g. "
                           '{"team-a": {"token_sha256": "<64 hex digits>", "query_budget": 100000}}')
    problems = [problem for name, entry in table.items() for problem in _problems(name, entry)]
    owners: dict[str, str] = {}
    for name, entry in table.items():
        digest = entry.get("token_sha256") if isinstance(entry, dict) else None
        if isinstance(digest, str) and owners.setdefault(digest, name) != name:
            problems.append(Problem(f"callers.{name}.token_sha256", f"the same token as {owners[digest]}",
                                    "give each caller a token of its own, so that each call has one owner"))
    if problems:
        raise CallersError(f"--callers {path}: {len(problems)} problem(s):\n" + "\n".join(f"  {p}" for p in problems))
    return tuple(Caller(name, entry["token_sha256"], entry["query_budget"]) for name, entry in table.items())


class Accounts:
    """The accounts calls are charged to: one per caller of ``callers``, or without them one anonymous account
    with ``query_budget`` (the server without ``--callers``). Thread-safe as its budgets are."""

    def __init__(self, callers: Sequence[Caller] | None, query_budget: int = 0) -> None:
        if callers is not None and query_budget:
            raise ValueError("with callers each has its own query budget; the shared one must be 0")
        self.open = callers is None
        self._anonymous = Account("", QueryBudget(query_budget))
        self._digests = [(c.token_sha256.encode(), Account(c.name, QueryBudget(c.query_budget)))
                         for c in callers or ()]

    def identify(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> Account:
        """The account of the call with this metadata; UNAUTHENTICATED (a :class:`RequestError`) without a token
        that a caller holds. Without callers, every call is the anonymous account, token or not."""
        if self.open:
            return self._anonymous
        header = next((value for key, value in metadata or () if key == AUTHORIZATION), None)
        if not isinstance(header, str) or not header.lower().startswith(BEARER):
            raise RequestError(grpc.StatusCode.UNAUTHENTICATED,
                               "no bearer token: this server takes calls from its named callers only; send "
                               "metadata 'authorization: Bearer TOKEN' (--token-file or AVC_TOKEN)")
        presented = token_sha256(header[len(BEARER):].strip()).encode()
        found = None
        for digest, account in self._digests:  # every one, no early exit: the time is the same whoever matches
            if hmac.compare_digest(presented, digest):
                found = account
        if found is None:
            raise RequestError(grpc.StatusCode.UNAUTHENTICATED, "the bearer token is not one of this server's callers")
        return found
