"""The layout's rules, checked on the source: the three jobs meet only in avc_common, attacks/ is in layers,
and no module edits the import path (docs/architecture.md "Layout")."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package -> the first-party packages it may import (besides itself)
ALLOWED = {
    "avc_common": set(),
    "training": {"avc_common"},
    "defense": {"avc_common"},
    "attacks": {"avc_common"},
}
# attacks' layers, lowest first: each may import only the layers before it
LAYERS = ["access", "blocks", "whitebox", "methods", "scoring"]
FIRST_PARTY = {*ALLOWED, "bench", "demo", "proto"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_the_three_jobs_meet_only_in_the_common_package(package):
    bad = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        tops = {name.split(".")[0] for name in imported_modules(path)} & FIRST_PARTY
        if tops - ALLOWED[package] - {package}:
            bad[path.relative_to(ROOT).as_posix()] = sorted(tops - ALLOWED[package] - {package})
    assert bad == {}, f"{package}/ may import only {sorted(ALLOWED[package])} of the project's packages: {bad}"


def test_attacks_layers_import_only_the_layers_below():
    bad = {}
    for rank, layer in enumerate(LAYERS):
        for path in sorted((ROOT / "attacks" / layer).rglob("*.py")):
            used = {name.split(".")[1] for name in imported_modules(path)
                    if name.startswith("attacks.") and name.count(".") >= 1}
            above = used - set(LAYERS[:rank + 1])
            if above:
                bad[path.relative_to(ROOT).as_posix()] = sorted(above)
    assert bad == {}, f"attacks/ layers are {' < '.join(LAYERS)}; these import a later layer: {bad}"


def test_attacks_init_only_reexports():
    tree = ast.parse((ROOT / "attacks" / "__init__.py").read_text())
    kinds = {type(node).__name__ for node in tree.body} - {"Expr", "ImportFrom", "Import", "Assign"}
    assert kinds == set(), f"attacks/__init__.py should only import and list names, found {kinds}"


def test_no_module_edits_the_import_path():
    offenders = [path.relative_to(ROOT).as_posix()
                 for folder in ("avc_common", "defense", "attacks", "training", "proto", "demo", "bench")
                 for path in (ROOT / folder).rglob("*.py") if "sys.path" in path.read_text()]
    assert offenders == []
