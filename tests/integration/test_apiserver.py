"""The generated CRDs against a real kube-apiserver: what users see when they apply, patch and get."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from finetune_api.base import PASCAL_CASE
from finetune_cli.validate import validate_document
from helpers.kube import Cluster
from helpers.support import EXAMPLES, example, example_documents, invalid_cases, merge_patch

CASES = invalid_cases()


def test_every_example_is_accepted_by_dry_run_and_by_create(cluster: Cluster) -> None:
    dry = cluster.kubectl("apply", "--dry-run=server", "-f", str(EXAMPLES))
    documents = example_documents()
    assert dry.stdout.count("(server dry run)") == len(documents)
    cluster.kubectl("create", "-f", str(EXAMPLES))
    jobs = json.loads(cluster.kubectl("get", "ftj", "-A", "-o", "json").stdout)["items"]
    gates = json.loads(cluster.kubectl("get", "evg", "-A", "-o", "json").stdout)["items"]
    deployments = json.loads(cluster.kubectl("get", "mdep", "-A", "-o", "json").stdout)["items"]
    applied = {
        (d["kind"], d["metadata"].get("namespace", "default"), d["metadata"]["name"]) for d in documents
    }
    stored_names = {
        (o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]) for o in jobs + gates + deployments
    }
    assert applied <= stored_names
    assert len(applied) == len(documents)
    sft = example("sft-support-assistant.yaml")
    stored = next(j for j in jobs if j["metadata"] == j["metadata"] | sft["metadata"])
    # no defaults were written into the stored object: it holds what the user applied
    assert stored["spec"] == sft["spec"]


def same_paths(text: str) -> str:
    """The server writes a map entry as `graders[name]` in CEL errors and `graders.name` in schema errors."""
    return re.sub(r"\[([^\]0-9][^\]]*)\]", r".\1", text)


@pytest.fixture(scope="module")
def corpus_namespace(cluster: Cluster) -> str:
    """Dry-run creates only: a name that already exists would turn `apply` into a patch."""
    cluster.kubectl("create", "namespace", "corpus")
    return "corpus"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_invalid_manifest_is_rejected_by_the_server_naming_the_field(
    cluster: Cluster, corpus_namespace: str, case
) -> None:
    manifest = merge_patch(case.manifest, {"metadata": {"namespace": corpus_namespace}})
    result = cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(manifest), check=False
    )
    assert result.returncode != 0, f"{case.name} was accepted by the API server"
    assert same_paths(case.expect) in same_paths(result.stderr), result.stderr
    # a broken format reads as its description on the field's own line, never as a regular expression
    if case.expect_message:
        lines = same_paths(result.stderr).splitlines()
        assert any(same_paths(case.expect) in line and case.expect_message in line for line in lines), lines
    assert "should match" not in result.stderr
    # `finetune validate` refuses it too, naming the same field (and, for a format, printing the same text)
    _, _, problems = validate_document(case.manifest)
    assert any(case.expect in str(p) for p in problems)
    if case.expect_message:
        assert f"{case.expect}: {case.expect_message}" in [str(p) for p in problems]


FTJ = ("finetune.dev", "v1alpha1", "default", "finetunejobs")


def create(cluster: Cluster, name: str, manifest: dict) -> dict:
    body = manifest | {"metadata": manifest["metadata"] | {"name": name, "namespace": "default"}}
    return cluster.custom.create_namespaced_custom_object(*FTJ, body)


def get(cluster: Cluster, name: str) -> dict:
    return cluster.custom.get_namespaced_custom_object(*FTJ, name)


def patch(
    cluster: Cluster, name: str, body: dict, *, status: bool = False
) -> subprocess.CompletedProcess[str]:
    """`kubectl patch ftj NAME --type=merge`, as a user would; the result is returned, not checked."""
    extra = ["--subresource=status"] if status else []
    return cluster.kubectl("patch", "ftj", name, "--type=merge", *extra, "-p", json.dumps(body), check=False)


def test_immutable_spec_fields_are_refused_and_suspend_may_change(cluster: Cluster) -> None:
    create(cluster, "immutable", example("sft-support-assistant.yaml"))
    refused = patch(cluster, "immutable", {"spec": {"baseModel": {"uri": "s3://models/other/"}}})
    assert refused.returncode != 0
    assert "spec.baseModel: Invalid value" in refused.stderr
    assert "baseModel is immutable" in refused.stderr
    added = patch(cluster, "immutable", {"spec": {"image": "x/y:z"}})
    assert "image is immutable" in added.stderr
    accepted = patch(
        cluster, "immutable", {"spec": {"suspend": True, "runPolicy": {"retryLimit": 5, "maxRuntime": "12h"}}}
    )
    assert accepted.returncode == 0, accepted.stderr
    stored = get(cluster, "immutable")
    assert stored["spec"]["suspend"] is True
    assert stored["spec"]["runPolicy"] == {"retryLimit": 5, "maxRuntime": "12h"}


def test_status_subresource_keeps_declared_fields_and_prunes_the_rest(cluster: Cluster) -> None:
    create(cluster, "with-status", example("sft-support-assistant.yaml"))
    status = {
        "phase": "Training",
        "observedGeneration": 1,
        "attempts": 1,
        "progress": {"step": 120, "totalSteps": 500, "percent": 24, "summary": "120/500 (24%)", "loss": 1.25},
        "conditions": [
            {
                "type": "DataValidated",
                "status": "True",
                "reason": "DataGatesPassed",
                "message": "1200 rows, duplicate rate 0.4%",
                "lastTransitionTime": "2026-11-23T10:00:00Z",
                "observedGeneration": 1,
            }
        ],
        "undeclared": {"anything": 1},
    }
    cluster.custom.patch_namespaced_custom_object_status(*FTJ, "with-status", {"status": status})
    stored = get(cluster, "with-status")
    assert "undeclared" not in stored["status"]
    assert stored["status"]["progress"] == status["progress"]
    assert stored["status"]["conditions"] == status["conditions"]
    # status written through the main resource is ignored: the subresource owns it
    stored["status"] = {"phase": "Succeeded"}
    cluster.custom.replace_namespaced_custom_object(*FTJ, "with-status", stored)
    again = get(cluster, "with-status")
    assert again["status"]["phase"] == "Training"

    table = cluster.kubectl("get", "ftj", "with-status").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "METHOD", "PROGRESS", "LOSS", "GATE", "AGE"]
    assert table[1].split()[:6] == ["with-status", "Training", "sft", "120/500", "(24%)", "1.25"]
    wide = cluster.kubectl("get", "ftj", "with-status", "-o", "wide").stdout.splitlines()[0].split()
    assert wide[-3:] == ["ETA", "ATTEMPTS", "AGE"]


def test_status_outside_the_schema_is_refused(cluster: Cluster) -> None:
    create(cluster, "bad-status", example("sft-support-assistant.yaml"))
    refused = patch(cluster, "bad-status", {"status": {"phase": "Exploded"}}, status=True)
    assert refused.returncode != 0
    assert "status.phase: Unsupported value" in refused.stderr
    condition = {
        "type": "Ready",
        "status": "True",
        "reason": "gate passed",
        "lastTransitionTime": "2026-11-23T10:00:00Z",
    }
    refused = patch(cluster, "bad-status", {"status": {"conditions": [condition]}}, status=True)
    assert refused.returncode != 0
    assert (
        f'status.conditions[0].reason: Invalid value: "gate passed": {PASCAL_CASE.message}' in refused.stderr
    )


def test_evalgate_columns_and_category(cluster: Cluster) -> None:
    table = cluster.kubectl("get", "evg", "-n", "ml-platform").stdout.splitlines()
    assert table[0].split() == ["NAME", "BASELINE", "LAST", "VERDICT", "AGE"]
    assert table[1].split()[:2] == ["support-release", "JobBaseModel"]
    everything = cluster.kubectl("get", "finetune", "-n", "ml-platform", "-o", "name").stdout.split()
    assert "evalgate.finetune.dev/support-release" in everything
    assert "finetunejob.finetune.dev/assistant-dpo" in everything


def test_watch_sees_status_updates(cluster: Cluster) -> None:
    from kubernetes import watch  # noqa: PLC0415

    manifest = merge_patch(
        example("dpo-helpfulness.yaml"), {"spec": {"evalGateRef": None, "outputUri": None}}
    )
    created = create(cluster, "watched", manifest)
    version = created["metadata"]["resourceVersion"]
    cluster.custom.patch_namespaced_custom_object_status(
        *FTJ,
        "watched",
        {"status": {"phase": "ValidatingData"}},
    )
    stream = watch.Watch().stream(
        cluster.custom.list_namespaced_custom_object,
        "finetune.dev",
        "v1alpha1",
        "default",
        "finetunejobs",
        resource_version=version,
        field_selector="metadata.name=watched",
        timeout_seconds=10,
    )
    phases = []
    for event in stream:
        phases.append(event["object"].get("status", {}).get("phase"))
        if "ValidatingData" in phases:
            break
    assert phases[-1] == "ValidatingData"
