"""Offline validation of FineTuneJob, EvalGate and ModelDeployment manifests, as the server judges them.

Three checks, each reported by field path:
1. the pydantic models (types, ranges, required fields, unknown fields);
2. the generated CRD's OpenAPI schema (what the API server validates structurally);
3. the CRD's CEL rules (`x-kubernetes-validations`), evaluated with cel-python. As on the server, a rule
   that cannot be evaluated (say, it reads an absent optional field) fails. Transition rules (those that
   read `oldSelf`) need the stored object and are left to the server.
A check that finds nothing new at a path already reported stays quiet, so one mistake prints once.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import celpy
import jsonschema
import yaml
from celpy.adapter import json_to_cel
from pydantic import ValidationError

from finetune_api.base import API_VERSION
from finetune_api.crd import all_crds
from finetune_api.v1alpha1 import KINDS, RESOURCES
from finetune_api.v1alpha1.graders import Grader

Schema = dict[str, Any]


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


@dataclass(frozen=True)
class Result:
    source: str
    kind: str
    name: str
    problems: tuple[Problem, ...]

    @property
    def label(self) -> str:
        return f"{self.source}: {self.kind or '?'}/{self.name or '?'}"


def _discriminator_values() -> frozenset[str]:
    union = get_args(get_args(Grader)[0])
    return frozenset(get_args(variant.model_fields["type"].annotation)[0] for variant in union)


_TAGS = _discriminator_values()
_UNION_MEMBERS = frozenset({"int", "float", "str", "bool"})
_REQUIRED = re.compile(r"^'(.+)' is a required property$")


def _user_loc(loc: Iterable[int | str]) -> list[int | str]:
    """A pydantic error location without pydantic's own steps (union members, tagged-union variants)."""
    parts = list(loc)
    return [
        part
        for i, part in enumerate(parts)
        if isinstance(part, int)
        or not (
            (part in _TAGS and 0 < i < len(parts) - 1)
            or part in _UNION_MEMBERS
            or "[" in part
            or part.startswith("function-")
        )
    ]


def _render(parts: Iterable[int | str], schema: Schema) -> str:
    """A field path as the API server writes it: `spec.suites[0].judge`, map entries as `graders[name]`."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
            schema = schema.get("items", {})
        elif part in schema.get("properties", {}) or not isinstance(schema.get("additionalProperties"), dict):
            out += f".{part}" if out else part
            schema = schema.get("properties", {}).get(part, {})
        else:
            out += f"[{part}]"
            schema = schema["additionalProperties"]
    return out


def _pydantic_problems(model: type[Any], doc: dict[str, Any], schema: Schema) -> list[Problem]:
    try:
        model.model_validate(doc)
    except ValidationError as err:
        problems = []
        for e in err.errors(include_url=False):
            message = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                message = "unknown field"
            problems.append(Problem(_render(_user_loc(e["loc"]), schema), message))
        return problems
    return []


def _to_jsonschema(node: Schema) -> Schema:
    out: Schema = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _to_jsonschema(value)
        elif key == "nullable" or key.startswith("x-kubernetes"):
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if node.get("nullable") and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
    return out


@functools.cache
def _schemas() -> dict[str, tuple[Schema, jsonschema.Draft4Validator]]:
    crds = all_crds()
    out = {}
    for _, names in RESOURCES:
        schema = crds[f"{names.name}.yaml"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        out[names.kind] = (schema, jsonschema.Draft4Validator(_to_jsonschema(schema)))
    return out


def _schema_problems(
    validator: jsonschema.Draft4Validator, doc: dict[str, Any], schema: Schema
) -> list[Problem]:
    problems = []
    for error in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        path = list(error.absolute_path)
        missing = _REQUIRED.match(error.message) if error.validator == "required" else None
        if missing:
            problems.append(Problem(_render([*path, missing.group(1)], schema), "required field is missing"))
        else:
            problems.append(Problem(_render(path, schema), error.message))
    return problems


@functools.cache
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _typed(value: Any, schema: Schema) -> Any:
    """JSON value -> CEL value, with numbers typed as the schema types them (as the API server does)."""
    kind = schema.get("type")
    if kind == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind == "object" and isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {
            k: _typed(v, props.get(k) or (extra if isinstance(extra, dict) else {}))
            for k, v in value.items()
            if v is not None
        }
    if kind == "array" and isinstance(value, list):
        return [_typed(v, schema.get("items", {})) for v in value]
    return value


def _cel_problems(value: Any, schema: Schema, parts: list[int | str], root: Schema) -> Iterator[Problem]:
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue
        try:
            ok = _program(rule["rule"]).evaluate({"self": json_to_cel(_typed(value, schema))})
        except Exception as err:  # celpy raises several types; the server fails such a rule too
            ok = err
        if isinstance(ok, Exception):  # celpy also returns evaluation errors as values
            message = f"{rule['message']} (the rule could not be evaluated: {ok})"
            yield Problem(_render(parts, root), message)
        elif not bool(ok):
            field = [p for p in rule.get("fieldPath", "").split(".") if p]
            yield Problem(_render([*parts, *field], root), rule["message"])
    if isinstance(value, dict) and schema.get("type") == "object":
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            child = props.get(key) or (extra if isinstance(extra, dict) else None)
            if child is not None and sub is not None:
                yield from _cel_problems(sub, child, [*parts, key], root)
    elif isinstance(value, list) and schema.get("type") == "array":
        for i, item in enumerate(value):
            yield from _cel_problems(item, schema.get("items", {}), [*parts, i], root)


def validate_document(doc: Any) -> tuple[str, str, list[Problem]]:
    """(kind, name, problems) for one parsed manifest."""
    if not isinstance(doc, dict):
        return "", "", [Problem("", "a manifest must be a mapping with apiVersion, kind, metadata and spec")]
    kind = str(doc.get("kind", ""))
    name = str((doc.get("metadata") or {}).get("name", "")) if isinstance(doc.get("metadata"), dict) else ""
    if doc.get("apiVersion") != API_VERSION:
        return kind, name, [Problem("apiVersion", f"must be {API_VERSION}, got {doc.get('apiVersion')!r}")]
    if kind not in KINDS:
        return kind, name, [Problem("kind", f"must be one of {', '.join(sorted(KINDS))}, got {kind!r}")]
    schema, validator = _schemas()[kind]
    problems = _pydantic_problems(KINDS[kind], doc, schema)
    seen = {p.path for p in problems}
    structural = _schema_problems(validator, doc, schema)
    # like the server, judge CEL rules only on input that has the schema's shape
    cel = [] if structural else list(_cel_problems(doc, schema, [], schema))
    for problem in [*structural, *cel]:
        if problem.path not in seen and problem not in problems:
            problems.append(problem)
            seen.add(problem.path)
    return kind, name, problems


def validate_text(text: str, source: str) -> list[Result]:
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        return [Result(source, "", "", (Problem("", f"not valid YAML: {err}"),))]
    if not docs:
        return [Result(source, "", "", (Problem("", "no manifest in file"),))]
    results = []
    for doc in docs:
        kind, name, problems = validate_document(doc)
        results.append(Result(source, kind, name, tuple(problems)))
    return results


def expand(paths: Iterable[str]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml"))
        else:
            yield path
