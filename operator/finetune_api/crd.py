"""Pydantic models -> structural `apiextensions.k8s.io/v1` CustomResourceDefinitions.

Pydantic emits JSON Schema 2020-12; a CRD needs a *structural* OpenAPI v3.0 schema. This module owns that
translation and nothing else:

- `$ref`/`$defs` are inlined; titles, defaults and pydantic's discriminator hints are dropped (defaults are
  applied when a model is loaded, never written into stored objects);
- `X | None` becomes `X` with `nullable: true`; `const` becomes a one-value `enum`;
- numeric `exclusiveMinimum/Maximum` become OpenAPI v3.0's boolean form;
- `extra="forbid"` (`additionalProperties: false`) is dropped: the API server prunes unknown fields and
  `kubectl apply` (strict field validation) rejects them;
- a discriminated union (a `type` field choosing a variant) becomes one object with the union of the
  variants' properties, plus one CEL rule per variant that requires its fields and forbids the others'.
  Variants must agree on the schema of a property they share: CEL cannot see an untyped property.

Anything else it cannot express (a union of unrelated types) raises `SchemaError` rather than producing a
schema the API server would reject. `python -m finetune_api.crd [--check] [DIR]` writes (or checks) crds/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from finetune_api.base import GROUP, VERSION, CrdNames

Schema = dict[str, Any]

_DROP = ("title", "default", "discriminator", "examples")
HEADER = "# Generated from finetune_api by `make crds` (python -m finetune_api.crd). Do not edit.\n"


class SchemaError(ValueError):
    """A model uses a construct that has no structural-schema equivalent."""


def structural_schema(model: type[BaseModel]) -> Schema:
    """The structural schema of `model` (validation mode, camelCase names)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _convert(raw, defs, path=model.__name__)


def _merge(base: Schema, overlay: Schema) -> Schema:
    """`overlay`'s keys win, except CEL rules, which accumulate."""
    out = {**base, **overlay}
    rules = [*base.get("x-kubernetes-validations", []), *overlay.get("x-kubernetes-validations", [])]
    if rules:
        out["x-kubernetes-validations"] = rules
    return out


def _convert(node: Schema, defs: dict[str, Schema], path: str) -> Schema:
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").removeprefix("#/$defs/")]
        node = _merge(target, node)
    if "allOf" in node:
        parts = node.pop("allOf")
        if len(parts) != 1:
            raise SchemaError(f"{path}: allOf with {len(parts)} schemas is not supported")
        node = _merge(_convert(parts[0], defs, path), node)
    if "anyOf" in node and not _value_validations_only(node["anyOf"]):
        variants = node.pop("anyOf")
        non_null = [v for v in variants if v.get("type") != "null"]
        if len(non_null) != 1:
            raise SchemaError(f"{path}: a union of {len(non_null)} types has no structural schema")
        node = _merge(_convert(non_null[0], defs, path), node)
        if len(non_null) < len(variants):
            node["nullable"] = True
    if "oneOf" in node:
        disc = node.get("discriminator", {}).get("propertyName")
        if not disc:
            raise SchemaError(f"{path}: oneOf without a discriminator has no structural schema")
        variants = [_convert(v, defs, path) for v in node.pop("oneOf")]
        node = _merge(_discriminated_union(variants, disc, path), node)
    for key in _DROP:
        node.pop(key, None)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound in ("Minimum", "Maximum"):
        value = node.get(f"exclusive{bound}")
        if value is not None and not isinstance(value, bool):
            node[bound.lower()] = value
            node[f"exclusive{bound}"] = True
    extra = node.get("additionalProperties")
    if extra is False:
        del node["additionalProperties"]
    elif extra is True:
        del node["additionalProperties"]
        node["x-kubernetes-preserve-unknown-fields"] = True
    elif isinstance(extra, dict):
        node["additionalProperties"] = _convert(extra, defs, f"{path}.*")
    if "properties" in node:
        node["properties"] = {
            name: _convert(sub, defs, f"{path}.{name}") for name, sub in node["properties"].items()
        }
    if "items" in node:
        node["items"] = _convert(node["items"], defs, f"{path}[]")
    if "type" not in node and not (
        node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
    ):
        raise SchemaError(f"{path}: no type (a structural schema needs one on every node)")
    return node


def _value_validations_only(variants: list[Schema]) -> bool:
    """An anyOf of bare value validations (enum, ranges, pattern) is already structural: keep it."""
    return all("type" not in v and "$ref" not in v and "properties" not in v for v in variants)


def _strip_description(schema: Schema) -> Schema:
    return {k: v for k, v in schema.items() if k != "description"}


def _discriminated_union(variants: list[Schema], disc: str, path: str) -> Schema:
    properties: dict[str, Schema] = {}
    for variant in variants:
        for name, sub in variant.get("properties", {}).items():
            if name == disc:
                continue
            if name in properties and _strip_description(properties[name]) != _strip_description(sub):
                raise SchemaError(
                    f"{path}.{name}: the variants of this union give {name} different schemas; "
                    "a structural schema (and CEL) needs one per field name"
                )
            properties.setdefault(name, sub)
    values = [v["properties"][disc]["enum"][0] for v in variants]
    rules: list[Schema] = []
    for value, variant in zip(values, variants, strict=True):
        own = variant.get("properties", {})
        required = [r for r in variant.get("required", []) if r != disc]
        foreign = sorted(set(properties) - set(own))
        checks = [f"has(self.{r})" for r in required]
        checks += [f"!has(self.{f})" for f in foreign]
        guard = f"self.{disc} != '{value}'"
        if checks:
            needs = ", ".join(required) or "nothing else"
            allowed = ", ".join(sorted(own))
            rules.append(
                {
                    "rule": f"{guard} || ({' && '.join(checks)})",
                    "message": f"{disc} {value} requires {needs} and accepts only {allowed}",
                }
            )
        rules.extend(
            {**rule, "rule": f"{guard} || ({rule['rule']})"}
            for rule in variant.get("x-kubernetes-validations", [])
        )
    union: Schema = {
        "type": "object",
        "required": [disc],
        "properties": {disc: {"type": "string", "enum": values}, **properties},
    }
    if rules:
        union["x-kubernetes-validations"] = rules
    return union


def build_crd(model: type[BaseModel], names: CrdNames) -> Schema:
    """The CustomResourceDefinition of a root model with `spec` and `status` fields."""
    schema = structural_schema(model)
    props = schema["properties"]
    root: Schema = {
        "type": "object",
        "description": names.description or schema.get("description", ""),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": props["spec"],
            "status": props["status"],
        },
    }
    if "x-kubernetes-validations" in schema:
        root["x-kubernetes-validations"] = schema["x-kubernetes-validations"]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": names.name, "labels": {"app.kubernetes.io/part-of": "finetune-operator"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": names.kind,
                "listKind": f"{names.kind}List",
                "singular": names.kind.lower(),
                "plural": names.plural,
                "shortNames": list(names.short_names),
                "categories": list(names.categories),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        *(c.to_schema() for c in names.printer_columns),
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def all_crds() -> dict[str, Schema]:
    """File name -> CRD for every kind this API serves."""
    from finetune_api.v1alpha1 import RESOURCES  # noqa: PLC0415 - the registry imports this module

    return {f"{names.name}.yaml": build_crd(model, names) for model, names in RESOURCES}


class _NoAliasDumper(yaml.SafeDumper):
    """Writes repeated sub-schemas out in full: anchors in a CRD are legal YAML but unreadable."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(crd: Schema) -> str:
    body = yaml.dump(crd, Dumper=_NoAliasDumper, sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body


def all_files() -> dict[str, str]:
    """File name -> text of everything `make crds` writes: the CRDs and the admission policies."""
    from finetune_api import admission  # noqa: PLC0415 - imports the registry, which imports this module

    files = {name: render(crd) for name, crd in all_crds().items()}
    for filename, manifests in admission.FILES.items():
        body = "---\n".join(
            yaml.dump(doc, Dumper=_NoAliasDumper, sort_keys=False, width=100, allow_unicode=True)
            for doc in manifests()
        )
        files[filename] = HEADER + body
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune_api.crd", description=__doc__.split("\n")[0])
    parser.add_argument(
        "directories", nargs="*", type=Path, help="where to write (default crds; the chart keeps a copy)"
    )
    parser.add_argument("--check", action="store_true", help="fail if the files differ from the models")
    args = parser.parse_args(argv)
    stale = []
    for directory in args.directories or [Path("crds")]:
        for filename, text in all_files().items():
            target = directory / filename
            if args.check:
                if not target.exists() or target.read_text() != text:
                    stale.append(str(target))
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            print(f"wrote {target}")
    if stale:
        print("CRDs out of date with finetune_api (run `make crds`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
