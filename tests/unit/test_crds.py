"""The generated CRDs: no drift from the models, structural, with the columns and rules users rely on."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import celpy
import pytest
import yaml
from pydantic import BaseModel, ValidationError

from finetune_api.base import PASCAL_CASE
from finetune_api.crd import all_crds, render
from finetune_api.promotion import SHA256_HEX, VERSION, ManifestObject, check_version
from finetune_api.v1alpha1.conditions import Condition
from helpers.support import CRDS, ROOT

CHART_CRDS = ROOT / "helm" / "finetune-operator" / "files" / "crds"
POLICY_FILES = ["approval-policy.yaml", "rollout-policy.yaml"]

FORBIDDEN = {"$ref", "$defs", "oneOf", "allOf", "title", "default", "const", "discriminator"}
# inside anyOf/not a structural schema allows value validations only
VALUE_ONLY_FORBIDDEN = {
    "type",
    "properties",
    "items",
    "description",
    "default",
    "nullable",
    "additionalProperties",
}


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((CRDS / name).read_text())
    return doc


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}.*")
    if "items" in schema:
        yield from nodes(schema["items"], f"{path}[]")


def root_schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


CRD_FILES = [
    "finetunejobs.finetune.dev.yaml",
    "evalgates.finetune.dev.yaml",
    "modeldeployments.finetune.dev.yaml",
]


def test_committed_crds_match_the_models() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "finetune_api.crd", "--check", "crds", str(CHART_CRDS.relative_to(ROOT))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in CRDS.glob("*.yaml")) == sorted(CRD_FILES)
    assert sorted(p.name for p in (CRDS / "admission").iterdir()) == [
        "approval-policy.yaml",
        "rollout-policy.yaml",
    ]
    # the chart's copy (templates render it) is the same set of files
    assert sorted(p.name for p in CHART_CRDS.glob("*.yaml")) == sorted(CRD_FILES)
    assert sorted(p.name for p in (CHART_CRDS / "admission").iterdir()) == [
        "approval-policy.yaml",
        "rollout-policy.yaml",
    ]


def test_check_mode_detects_drift(tmp_path) -> None:
    for name, crd in all_crds().items():
        (tmp_path / name).write_text(render(crd).replace("maxLength: 63", "maxLength: 64", 1))
    result = subprocess.run(
        [sys.executable, "-m", "finetune_api.crd", "--check", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "out of date" in result.stderr


@pytest.mark.parametrize("name", CRD_FILES)
def test_schema_is_structural(name: str) -> None:
    for path, node in nodes(root_schema(load(name))):
        assert not FORBIDDEN & node.keys(), f"{name}{path} has {FORBIDDEN & node.keys()}"
        for sub in [*node.get("anyOf", []), node.get("not", {})]:
            assert not VALUE_ONLY_FORBIDDEN & sub.keys(), (
                f"{name}{path}: anyOf/not may hold value validations only"
            )
        typed = (
            "type" in node
            or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        )
        assert typed, f"{name}{path} has no type"
        assert node.get("additionalProperties") is not False
        if "properties" in node and "additionalProperties" in node:
            pytest.fail(f"{name}{path}: properties and additionalProperties are exclusive")
        if isinstance(node.get("exclusiveMinimum"), float | int) and not isinstance(
            node["exclusiveMinimum"], bool
        ):
            pytest.fail(f"{name}{path}: exclusiveMinimum must be boolean in OpenAPI v3.0")


@pytest.mark.parametrize("name", CRD_FILES)
def test_spec_lists_and_strings_are_bounded(name: str) -> None:
    """The API server estimates CEL cost from maxItems/maxLength; unbounded spec lists break rules."""
    spec = root_schema(load(name))["properties"]["spec"]
    for path, node in nodes(spec, ".spec"):
        if node.get("type") == "array":
            assert "maxItems" in node, f"{path} has no maxItems"
        if node.get("type") == "string" and "enum" not in node:
            assert "maxLength" in node, f"{path} has no maxLength"


def test_finetunejob_names_columns_and_subresources() -> None:
    crd = load("finetunejobs.finetune.dev.yaml")
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"], names["categories"]) == (
        "FineTuneJob",
        "finetunejobs",
        ["ftj"],
        ["finetune"],
    )
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Method", "Progress", "Loss", "Gate", "Age"]
    schema = root_schema(crd)
    assert schema["required"] == ["spec"]
    phase = schema["properties"]["status"]["properties"]["phase"]
    assert phase["enum"] == [
        "Pending",
        "ValidatingData",
        "Training",
        "Evaluating",
        "AwaitingApproval",
        "Promoting",
        "Succeeded",
        "Failed",
        "Rejected",
        "Suspended",
    ]
    conditions = schema["properties"]["status"]["properties"]["conditions"]["items"]
    assert set(conditions["required"]) == {"type", "status", "reason", "lastTransitionTime"}
    assert set(conditions["properties"]) >= {"observedGeneration", "message"}


def test_evalgate_names_and_columns() -> None:
    crd = load("evalgates.finetune.dev.yaml")
    assert crd["spec"]["names"]["shortNames"] == ["evg"]
    assert crd["spec"]["names"]["categories"] == ["finetune"]
    columns = [
        c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"] if not c.get("priority")
    ]
    assert columns == ["Baseline", "Last Verdict", "Age"]
    suites = root_schema(crd)["properties"]["spec"]["properties"]["suites"]
    assert suites["x-kubernetes-list-type"] == "map"
    assert suites["x-kubernetes-list-map-keys"] == ["name"]


def test_defaults_stay_out_of_stored_objects() -> None:
    for name in CRD_FILES:
        assert "default:" not in (CRDS / name).read_text()


def all_rules() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for name in CRD_FILES:
        for path, node in nodes(root_schema(load(name))):
            for rule in node.get("x-kubernetes-validations", []):
                yield name, path, rule


def test_every_cel_rule_compiles_and_has_a_message() -> None:
    env = celpy.Environment()
    rules = list(all_rules())
    assert len(rules) > 40
    for name, path, rule in rules:
        env.compile(rule["rule"])
        assert rule["message"].strip(), f"{name}{path}: rule without message"


def test_string_formats_are_cel_rules_with_a_description_not_patterns() -> None:
    """The server's error for an OpenAPI `pattern` prints the regular expression; a rule, its message."""
    formats = 0
    for name, path, rule in all_rules():
        if "self.matches(r'" in rule["rule"]:
            formats += 1
            assert rule["message"].startswith("must "), f"{name}{path}: {rule['message']}"
            assert "[" not in rule["message"], f"{name}{path}: the message quotes an expression"
    assert formats > 50
    for name in CRD_FILES:
        for path, node in nodes(root_schema(load(name))):
            assert "pattern" not in node, f"{name}{path}: pattern {node['pattern']} (use base.Pattern)"


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        (
            Condition,
            {
                "type": "Ready",
                "status": "True",
                "reason": "gate passed",
                "lastTransitionTime": "2026-11-23T10:00:00Z",
            },
            PASCAL_CASE.message,
        ),
        (ManifestObject, {"key": "a.bin", "size": 1, "sha256": "XYZ"}, SHA256_HEX.message),
    ],
)
def test_formats_outside_the_manifest_corpus_say_what_they_accept(
    model: type[BaseModel], data: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError) as err:
        model.model_validate(data)
    assert [e["msg"] for e in err.value.errors()] == [f"Value error, {message}"]
    with pytest.raises(ValueError, match=re.escape(VERSION.message)):
        check_version("../v1")
