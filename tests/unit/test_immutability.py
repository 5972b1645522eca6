"""The spec's transition rules, evaluated with oldSelf the way the API server evaluates them on update."""

from __future__ import annotations

import copy
from typing import Any

import celpy
import pytest

from finetune_api.crd import all_crds
from helpers.support import example


def spec_rules() -> list[dict[str, str]]:
    crd = all_crds()["finetunejobs.finetune.dev.yaml"]
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return [r for r in spec["x-kubernetes-validations"] if "oldSelf" in r["rule"]]


def violations(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    env = celpy.Environment()
    out = []
    for rule in spec_rules():
        program = env.program(env.compile(rule["rule"]))
        ok = program.evaluate({"self": celpy.json_to_cel(new), "oldSelf": celpy.json_to_cel(old)})
        if not bool(ok):
            out.append(rule["fieldPath"])
    return out


BASE = example("sft-support-assistant.yaml")["spec"]


def changed(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


def test_unchanged_spec_passes() -> None:
    assert violations(BASE, copy.deepcopy(BASE)) == []


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (changed(method="dpo"), ".method"),
        (changed(baseModel={"uri": "s3://models/other/"}), ".baseModel"),
        (changed(hyperparameters={"epochs": 9}), ".hyperparameters"),
        (changed(resources=None), ".resources"),
        (changed(image="registry.example/trainer:v2"), ".image"),
        (changed(outputUri="s3://models-prod/elsewhere/"), ".outputUri"),
    ],
)
def test_changing_an_immutable_field_is_refused(spec: dict[str, Any], field: str) -> None:
    assert violations(BASE, spec) == [field]


def test_suspend_and_run_policy_may_change() -> None:
    spec = changed(suspend=True, runPolicy={"maxRuntime": "12h", "retryLimit": 5})
    assert violations(BASE, spec) == []
