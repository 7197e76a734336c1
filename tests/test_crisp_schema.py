"""crisp.schema.json, what editors check crisp.yaml against as you type, agrees with ``defense check``'s field rules.

The schema is a document that this file keeps honest, not code the check runs: ``field_problems``
(defense/submission/manifest.py) stays the authority, and what needs other files (the artifact's hash and input
spec, the Dockerfile's command and port) only the check can see.
"""
from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest
import yaml
from submission_fixtures import ROOT, crisp_doc
from test_check import BROKEN, _set

from defense.submission.manifest import FIELDS, SECTIONS, field_problems

SCHEMA = json.loads((ROOT / "crisp.schema.json").read_text())
VALIDATOR = jsonschema.Draft7Validator(SCHEMA)

# The broken manifests of tests/test_check.py that only `defense check` refuses: each field is well-formed on its
# own, and wrong only against the artifact or the Dockerfile.
CROSS_FILE = {
    ("artifact.sha256", "ab" * 32),  # not the hash of model.pt2
    ("artifact.path", "no/such/artifact"),
    ("container.port", 8080),  # not the Dockerfile's --port and EXPOSE
    ("container.entrypoint", ("python", "serve.py")),  # not the Dockerfile's ENTRYPOINT
    ("container.dockerfile", "Nope.Dockerfile"),
    ("input.height", 32),  # not the artifact's
    ("input.num_classes", 200),
}
# More field-level cases, valid and not, on which the schema and field_problems must agree.
MORE = [
    ("version", 2), ("version", True), ("extra", 1), ("submission.name", "  "),
    ("submission.authors", [{"email": "a@example.org"}]),
    ("artifact.sha256", "AB" * 32), ("input.width", 0), ("input.channels", True), ("container.port", "fifty"),
    ("container.entrypoint", ["python", 3]), ("resources.cpu", 0), ("resources.cpu", 0.5),
    ("resources.memory", "512 Mi"), ("resources.memory", 4 * 2**30), ("resources.memory", "-1Gi"),
    ("query_budget.per_image", 1),
]


def _key(field: str, value: Any) -> tuple[str, Any]:
    return field, tuple(value) if isinstance(value, list) else value


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Any]:
    """The good fixture of tests/test_check.py; the schema never opens the artifact, so a stand-in file will do."""
    artifact = tmp_path_factory.mktemp("art")
    (artifact / "model.pt2").write_bytes(b"a model")
    return crisp_doc(artifact)


def errors(doc: Any) -> list[str]:
    """Where the schema refuses ``doc``: the dotted path of each error (a section for a missing or unknown field)."""
    return [".".join(map(str, error.absolute_path)) for error in VALIDATOR.iter_errors(doc)]


def shared(path: list[str], field: list[str]) -> bool:
    """Whether one of two dotted paths starts with the other (the document itself is the empty path)."""
    path = [p for p in path if p]
    return path[:len(field)] == field[:len(path)]


def test_the_schema_is_valid_and_has_exactly_the_manifests_fields():
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    leaves = {"version"} | {f"{section}.{key}" for section, spec in SCHEMA["properties"].items()
                            if section != "version" for key in spec["properties"]}
    assert leaves == set(FIELDS)
    assert set(SCHEMA["required"]) == SECTIONS == set(SCHEMA["properties"])  # "version" is a section of its own
    for section in SECTIONS - {"version"}:
        assert set(SCHEMA["properties"][section]["required"]) == {f.split(".")[1] for f in FIELDS
                                                                  if f.startswith(section + ".")}


def test_the_committed_crisp_yaml_names_the_schema_and_validates_against_it(good):
    text = (ROOT / "crisp.yaml").read_text()
    found = re.match(r"# yaml-language-server: \$schema=(\S+)\n", text)
    assert found and (ROOT / found[1]).resolve() == ROOT / "crisp.schema.json"
    assert errors(yaml.safe_load(text)) == []
    assert errors(good) == [] and field_problems(good) == []


@pytest.mark.parametrize("field,value", [case[:2] for case in BROKEN] + MORE,
                         ids=[f"{f}={v!r}"[:40] for f, v, *_ in BROKEN + MORE])
def test_the_schema_refuses_what_the_check_refuses_field_by_field(good, field, value):
    doc = json.loads(json.dumps(good))
    _set(doc, field, value)
    where, problems = errors(doc), field_problems(doc)
    assert bool(where) == bool(problems), (where, problems)
    assert all(shared(w.split("."), field.split(".")) for w in where), where  # refused at the field, in or above it
    if (field, value) in [case[:2] for case in BROKEN]:
        assert (not where) == (_key(field, value) in CROSS_FILE), where  # the check refuses every BROKEN case


def test_every_cross_file_case_is_one_of_the_checks_broken_manifests():
    assert CROSS_FILE.issubset({_key(field, value) for field, value, *_ in BROKEN})


def test_a_not_a_mapping_manifest_is_refused_by_both():
    assert errors(["just", "a", "list"]) == [""] and field_problems(["just", "a", "list"])
