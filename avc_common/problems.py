"""A problem found in a user's input, said so that it can be fixed in one go."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: where (a flag, a manifest field or a file), what, and the fix."""

    field: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}\n      fix: {self.fix}"
