"""YAML read safely and strictly: PyYAML's safe loader, refusing a key given twice in one mapping.

PyYAML alone keeps the last of two equal keys without a word, so a ``labels.yml`` or a
``crisp.yaml`` with a copy-pasted line would silently mean something else. Every user file
the toolkit reads as YAML goes through :func:`load_yaml`.
"""
from __future__ import annotations

from typing import Any

import yaml


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A YAML mapping names one key twice; PyYAML alone would keep the last value without a word."""

    def __init__(self, key: Any, first: yaml.Mark, again: yaml.Mark) -> None:
        super().__init__(problem=f"found duplicate key {key!r}", problem_mark=again)
        self.key, self.lines = key, (first.line + 1, again.line + 1)


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that raises :class:`DuplicateKeyError` for a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)  # resolve `<<` merges first, as SafeLoader does, so merged keys count too
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise DuplicateKeyError(key, seen[key], key_node.start_mark)
                seen[key] = key_node.start_mark
            except TypeError:
                pass  # an unhashable key: the base class refuses it with its own message
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """``text`` parsed with :class:`UniqueKeyLoader` (a SafeLoader: no Python objects are built)."""
    return yaml.load(text, Loader=UniqueKeyLoader)
