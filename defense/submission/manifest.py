"""The submission manifest ``crisp.yaml``: its fields, and every way it can be wrong at once.

A submission is a model artifact, the Dockerfile that serves it and this manifest. All
three must agree (hash, input spec, entrypoint, port) before anything is started, so
:func:`validate` checks each field against a table of rules and then cross-checks the
artifact and the Dockerfile, collecting every problem with the field and the fix rather
than stopping at the first. README "Submission (crisp.yaml)" documents the fields.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from dockerfile_parse import DockerfileParser

from avc_common.artifact import MODEL_FILE, ArtifactError, read_manifest, sha256_file
from avc_common.images import ImageShape
from avc_common.problems import Problem
from avc_common.yaml_unique import load_yaml

DEFAULT_ARTIFACT = "runs/fmnist-trades/artifact"
INPUT_KEYS = ("height", "width", "channels", "num_classes")
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|K|M|G|T)?$")
_UNITS = {None: 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


@dataclass(frozen=True)
class Submission:
    """A validated crisp.yaml with its paths resolved and the Dockerfile's command read."""

    path: Path
    doc: dict[str, Any]
    artifact: Path
    dockerfile: Path
    command: list[str]  # the container's ENTRYPOINT + CMD, exec form

    @property
    def input_shape(self) -> ImageShape:
        return ImageShape.from_mapping(self.doc["input"])

    @property
    def num_classes(self) -> int:
        return self.doc["input"]["num_classes"]

    @property
    def memory_bytes(self) -> int:
        return parse_memory(self.doc["resources"]["memory"])


def parse_memory(value: Any) -> int:
    """Bytes in a size such as ``4Gi``, ``512Mi``, ``2G`` or a plain integer; ValueError otherwise."""
    match = _MEMORY.match(str(value).strip())
    if isinstance(value, bool) or not match:
        raise ValueError(value)
    return int(float(match[1]) * _UNITS[match[2]])


def _is_int(value: Any, low: int, high: int | None = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else "must be a non-empty string"


def _positive_int(value: Any) -> str | None:
    return None if _is_int(value, 1) else f"must be a positive integer, got {value!r}"


def _port(value: Any) -> str | None:
    return None if _is_int(value, 1, 65535) else f"must be a TCP port 1..65535, got {value!r}"


def _sha256(value: Any) -> str | None:
    ok = isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value)
    return None if ok else f"must be 64 lower-case hex digits, quoted, got {value!r}"


def _authors(value: Any) -> str | None:
    ok = isinstance(value, list) and value and all(
        isinstance(a, dict) and isinstance(a.get("name"), str) and a["name"].strip() for a in value)
    return None if ok else "must be a non-empty list of {name: ..., email: ...} (name required)"


def _track(value: Any) -> str | None:
    return None if value == "robust_model" else f"must be robust_model (this project submits a model), got {value!r}"


def _argv(value: Any) -> str | None:
    ok = isinstance(value, list) and value and all(isinstance(a, str) for a in value)
    return None if ok else "must be a non-empty list of strings (exec form, as in the Dockerfile)"


def _cpu(value: Any) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    return None if ok else f"must be a positive number of CPU cores, got {value!r}"


def _gpu(value: Any) -> str | None:
    return None if _is_int(value, 0) else f"must be a whole number of GPUs (0 for CPU only), got {value!r}"


def _memory(value: Any) -> str | None:
    try:
        parse_memory(value)
    except ValueError:
        return f"must be a size such as 4Gi or 512Mi, got {value!r}"
    return None


def _version(value: Any) -> str | None:
    return None if value == 1 and type(value) is int else f"must be 1 (the format this version reads), got {value!r}"


# field -> (rule, an example value the fix quotes)
FIELDS: dict[str, tuple[Callable[[Any], str | None], str]] = {
    "version": (_version, "1"),
    "submission.name": (_text, "trades-fmnist"),
    "submission.authors": (_authors, "[{name: Ada Lovelace, email: ada@example.org}]"),
    "submission.track": (_track, "robust_model"),
    "artifact.path": (_text, DEFAULT_ARTIFACT),
    "artifact.sha256": (_sha256, f"the output of `sha256sum {DEFAULT_ARTIFACT}/{MODEL_FILE}`"),
    "input.height": (_positive_int, "28"),
    "input.width": (_positive_int, "28"),
    "input.channels": (_positive_int, "1"),
    "input.num_classes": (_positive_int, "10"),
    "container.image": (_text, "localhost/defense-server:latest"),
    "container.dockerfile": (_text, "Dockerfile"),
    "container.port": (_port, "50051"),
    "container.entrypoint": (_argv, "the Dockerfile's ENTRYPOINT list"),
    "resources.cpu": (_cpu, "2"),
    "resources.gpu": (_gpu, "0"),
    "resources.memory": (_memory, "4Gi"),
    "query_budget.per_image": (_positive_int, "1000"),
}
SECTIONS = {name.split(".")[0] for name in FIELDS}


def _lookup(doc: dict[str, Any], field: str) -> tuple[bool, Any]:
    node: Any = doc
    for key in field.split("."):
        if not isinstance(node, dict) or key not in node:
            return False, None
        node = node[key]
    return True, node


def field_problems(doc: Any) -> list[Problem]:
    """Every missing, malformed or unknown field of a parsed crisp.yaml."""
    if not isinstance(doc, dict):
        return [Problem("crisp.yaml", f"must be a YAML mapping of fields, got {type(doc).__name__}",
                        "start from the crisp.yaml in the repository root")]
    problems, not_mappings = [], set()
    for field, (rule, example) in FIELDS.items():
        section = field.split(".")[0]
        if "." in field and section in doc and not isinstance(doc[section], dict):
            if section not in not_mappings:
                not_mappings.add(section)
                problems.append(Problem(section, f"must be a mapping, got {doc[section]!r}",
                                        "give its fields as indented `key: value` lines"))
            continue
        found, value = _lookup(doc, field)
        if not found:
            problems.append(Problem(field, "missing", f"add it, e.g. {field}: {example}"))
        elif (wrong := rule(value)) is not None:
            problems.append(Problem(field, wrong, f"set it, e.g. {field}: {example}"))
    present = [str(k) for k in doc] + [f"{s}.{k}" for s in SECTIONS if isinstance(doc.get(s), dict) for k in doc[s]]
    problems += [Problem(name, "unknown field", "remove it or correct its spelling (README lists the fields)")
                 for name in present if name not in FIELDS and name not in SECTIONS]
    return problems


def _artifact_problems(doc: dict[str, Any], artifact: Path, valid: Callable[[str], bool]) -> list[Problem]:
    """The artifact exists, matches its own manifest, and crisp.yaml's hash and input spec (where those are valid)."""
    if not artifact.exists():
        return [Problem("artifact.path", f"{artifact} does not exist",
                        f"run `make train-fmnist-trades` first (it writes {DEFAULT_ARTIFACT}) "
                        "or set artifact.path to your artifact folder")]
    try:
        manifest = read_manifest(artifact)
    except ArtifactError as err:
        return [Problem("artifact.path", str(err), "re-export the artifact (training/train_tiny.py writes it) "
                        "or point artifact.path at a complete one")]
    problems = []
    actual = sha256_file(artifact / MODEL_FILE)
    if valid("artifact.sha256") and doc["artifact"]["sha256"] != actual:
        problems.append(Problem("artifact.sha256",
                                f"{doc['artifact']['sha256']} but {artifact / MODEL_FILE} has {actual}",
                                f"set artifact.sha256: {actual} if that is the model you mean to submit"))
    served = {**manifest["input"], "num_classes": manifest["num_classes"]}
    for key in INPUT_KEYS:
        if valid(f"input.{key}") and doc["input"][key] != served[key]:
            problems.append(Problem(f"input.{key}", f"{doc['input'][key]} but the artifact has {served[key]}",
                                    f"set input.{key}: {served[key]}, "
                                    "or point artifact.path at the artifact for this input"))
    return problems


def read_command(dockerfile: Path) -> tuple[list[str], list[str], set[int]]:
    """The final stage's ENTRYPOINT and CMD (exec form, as lists) and EXPOSEd ports; ValueError if unusable."""
    instructions = DockerfileParser(path=str(dockerfile)).structure
    stages = [i for i, item in enumerate(instructions) if item["instruction"] == "FROM"]
    final = instructions[stages[-1] if stages else 0:]
    found: dict[str, list[str]] = {}
    ports: set[int] = set()
    for item in final:
        if item["instruction"] in ("ENTRYPOINT", "CMD"):
            try:
                argv = json.loads(item["value"])
            except json.JSONDecodeError:
                argv = None
            if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
                raise ValueError(f"line {item['startline'] + 1}: {item['instruction']} must use the exec "
                                 f'form ["python", "-m", ...], got {item["value"]}')
            found[item["instruction"]] = argv
        elif item["instruction"] == "EXPOSE":
            ports |= {int(p.split("/")[0]) for p in item["value"].split() if p.split("/")[0].isdigit()}
    if not found.get("ENTRYPOINT"):
        raise ValueError("no ENTRYPOINT")
    return found["ENTRYPOINT"], found.get("CMD", []), ports


def _occurrences(argv: list[str], name: str) -> Iterator[tuple[int, str, bool]]:
    """``(index, value, joined)`` of each ``--name VALUE`` (joined False) or ``--name=VALUE`` in ``argv``,
    read as argparse reads them: a ``--name`` consumes the word after it."""
    i = 0
    while i < len(argv):
        if argv[i] == name and i + 1 < len(argv):
            yield i, argv[i + 1], False
            i += 2
            continue
        if argv[i].startswith(name + "="):
            yield i, argv[i].split("=", 1)[1], True
        i += 1


def option(argv: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``argv`` (the last one wins, as in argparse)."""
    values = [value for _, value, _ in _occurrences(argv, name)]
    return values[-1] if values else None


def with_option(argv: list[str], name: str, value: str) -> list[str]:
    """``argv`` with every ``--name X`` / ``--name=X`` set to ``value``, appended if absent."""
    out = list(argv)
    found = list(_occurrences(argv, name))
    for i, _, joined in found:
        if joined:
            out[i] = f"{name}={value}"
        else:
            out[i + 1] = value
    return out if found else [*out, name, value]


def _dockerfile_problems(doc: dict[str, Any], dockerfile: Path,
                         valid: Callable[[str], bool]) -> tuple[list[str], list[Problem]]:
    """The Dockerfile exists, and its command, port and model path agree with crisp.yaml (where that is valid)."""
    fix = "give the Dockerfile an exec-form ENTRYPOINT that runs `python -m defense serve --model DIR`"
    if not dockerfile.is_file():
        return [], [Problem("container.dockerfile", f"{dockerfile} does not exist",
                            "set it to the submission's Dockerfile")]
    try:
        entrypoint, cmd, exposed = read_command(dockerfile)
    except ValueError as err:
        return [], [Problem("container.dockerfile", f"{dockerfile}: {err}", fix)]
    command, problems = entrypoint + cmd, []
    if valid("container.entrypoint") and doc["container"]["entrypoint"] != entrypoint:
        problems.append(Problem("container.entrypoint", f"differs from {dockerfile.name}'s ENTRYPOINT {entrypoint}",
                                f"set container.entrypoint: {json.dumps(entrypoint)} (or change the Dockerfile)"))
    if option(command, "--model") is None:
        problems.append(Problem("container.dockerfile",
                                f"{dockerfile.name}'s command {command} has no --model DIR", fix))
    served_port, port = option(command, "--port") or "50051", doc["container"]["port"]
    if valid("container.port") and (served_port != str(port) or port not in exposed):
        problems.append(Problem("container.port", f"{port} but {dockerfile.name} serves on --port {served_port} and "
                                f"EXPOSEs {sorted(exposed) or 'nothing'}",
                                "use one port in all three places, e.g. "
                                f"container.port: {served_port} and EXPOSE {served_port}"))
    return command, problems


def load(path: str | Path) -> tuple[Submission | None, list[Problem]]:
    """Parse and validate ``crisp.yaml``; the Submission is None whenever there is any problem."""
    path = Path(path)
    try:
        doc = load_yaml(path.read_text())
    except OSError as err:
        return None, [Problem(str(path), f"cannot read it ({err.strerror})", "pass the path of your crisp.yaml")]
    except yaml.YAMLError as err:
        return None, [Problem(str(path), f"not valid YAML: {err}", "fix the syntax at the position shown")]
    problems = field_problems(doc)
    if not isinstance(doc, dict):
        return None, problems
    invalid = {p.field for p in problems}

    def valid(field: str) -> bool:
        return field not in invalid and field.split(".")[0] not in invalid

    base, command = path.resolve().parent, []
    artifact = base / str(doc["artifact"]["path"]) if valid("artifact.path") else None
    dockerfile = base / str(doc["container"]["dockerfile"]) if valid("container.dockerfile") else None
    if artifact is not None:
        problems += _artifact_problems(doc, artifact, valid)
    if dockerfile is not None:
        command, more = _dockerfile_problems(doc, dockerfile, valid)
        problems += more
    if problems:
        return None, problems
    return Submission(path, doc, artifact, dockerfile, command), []
