"""Approvals on the real API server, with client-certificate users: the generated admission policies
(crds/admission/approval-policy.yaml, applied after the CRDs) decide who may approve and under which
name, and the operator promotes only on an approval of the verdict it gave.

alice is in the gate's approvers group, bob is not, and the operator's own identity (the suite's admin,
system:masters) is not an approver either.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers.scenario import BUCKET, NAME, OUTPUT, Scenario, evaluation
from helpers.support import eventually, example, merge_patch

REVIEWERS = "ml-release-reviewers"
APPROVE, APPROVED_BY = "finetune.dev/approve", "finetune.dev/approved-by"


def users(scenario: Scenario) -> dict[str, Path]:
    """Kubeconfigs for alice (an approver) and bob, who may both edit FineTuneJobs in the namespace."""
    plane = scenario.cluster.plane
    rbac = f"""
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: finetune-editor, namespace: {scenario.namespace}}}
rules:
- apiGroups: [finetune.dev]
  resources: [finetunejobs, evalgates]
  verbs: [get, list, watch, create, update, patch, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: finetune-editors, namespace: {scenario.namespace}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: finetune-editor}}
subjects:
- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}}
- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}}
"""
    scenario.cluster.kubectl("apply", "-f", "-", stdin=rbac)
    return {"alice": plane.user_kubeconfig("alice", (REVIEWERS,)), "bob": plane.user_kubeconfig("bob")}


def as_user(
    scenario: Scenario, kubeconfig: Path | None, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return scenario.cluster.plane.kubectl(*args, stdin=stdin, kubeconfig=kubeconfig)


def annotate(scenario: Scenario, kubeconfig: Path | None, **values: str) -> subprocess.CompletedProcess[str]:
    pairs = [f"finetune.dev/{key.replace('_', '-')}={value}" for key, value in values.items()]
    return as_user(
        scenario, kubeconfig, "annotate", "--overwrite", "ftj", NAME, "-n", scenario.namespace, *pairs
    )


def submit(scenario: Scenario, alice: Path, annotations: dict[str, str], seconds: float) -> dict[str, Any]:
    """alice applies the job with `annotations` (an approval committed with the manifest); it trains, is
    evaluated (a report taking `seconds`) and its gate passes. Returns the status awaiting approval."""
    manifest = merge_patch(
        example("sft-support-assistant.yaml"),
        {
            "metadata": {"namespace": scenario.namespace, "annotations": annotations},
            "spec": {
                "evalGateRef": {"name": "support-release"},
                "outputUri": OUTPUT,
                "storage": {"endpoint": scenario.s3.endpoint, "bucket": BUCKET},
                "resources": {"queueName": None},
            },
        },
    )
    scenario.name = NAME
    applied = as_user(scenario, alice, "apply", "-f", "-", stdin=yaml.safe_dump(manifest))
    assert applied.returncode == 0, applied.stderr
    scenario.validate()
    scenario.wait_job(f"{NAME}-train-1")
    scenario.checkpoint(240, eval_loss=0.9)
    scenario.cluster.finish_job(scenario.namespace, f"{NAME}-train-1")
    scenario.wait_job(f"{NAME}-evaluate")
    scenario.put("eval/report.json", {**evaluation(), "seconds": seconds})
    scenario.cluster.finish_job(scenario.namespace, f"{NAME}-evaluate")
    return scenario.wait_phase("AwaitingApproval")


def approved_condition(scenario: Scenario) -> tuple[str, str, str]:
    found = next(c for c in scenario.status["conditions"] if c["type"] == "Approved")
    return found["status"], found["reason"], found["message"]


def test_only_an_approver_approves_the_current_verdict_under_their_own_name(scenario: Scenario) -> None:
    gate = merge_patch(
        example("evalgate-support-release.yaml"), {"spec": {"approvers": {"groups": [REVIEWERS]}}}
    )
    gate["metadata"]["namespace"] = scenario.namespace
    scenario.cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(gate))
    who = users(scenario)
    alice, bob = who["alice"], who["bob"]

    # An approval applied with the manifest, before any verdict: accepted by the server (alice, her own
    # name), ignored by the operator.
    guessed = "v-0000000000000000"
    status = submit(scenario, alice, {APPROVE: guessed, APPROVED_BY: "alice"}, seconds=12.5)
    verdict = status["gate"]["verdictId"]
    assert verdict.startswith("v-")
    assert verdict != guessed
    reason, message = eventually(
        lambda: approved_condition(scenario)[1:] if scenario.status.get("conditions") else None, 10
    )
    assert reason == "ApprovalIgnored", message
    assert f"names verdict {guessed}, not this job's verdict {verdict}" in message
    eventually(lambda: any(r == "ApprovalIgnored" and message in m for r, m in scenario.events()), 10)
    assert "approval" not in scenario.status
    wide = scenario.cluster.kubectl("get", "ftj", NAME, "-n", scenario.namespace, "-o", "wide").stdout
    assert "VERDICT ID" in wide
    assert verdict in wide

    # The server refuses whoever is not an approver, and an approver writing another's name.
    for kubeconfig, by, refused in [
        (None, "admin", "admin is not one of them"),  # the operator's identity, system:masters
        (bob, "bob", "bob is not one of them"),
        (alice, "bob", "finetune.dev/approved-by must be your own user name (alice)"),
    ]:
        result = annotate(scenario, kubeconfig, approve=verdict, approved_by=by)
        assert result.returncode != 0
        assert refused in result.stderr, result.stderr
    annotations = scenario.cluster.ftj(scenario.namespace, NAME)["metadata"]["annotations"]
    assert (annotations[APPROVE], annotations[APPROVED_BY]) == (guessed, "alice")

    # alice approves this verdict under her own name: promoted, and recorded.
    result = annotate(scenario, alice, approve=verdict, approved_by="alice", approval_comment="release 3")
    assert result.returncode == 0, result.stderr
    promote = scenario.wait_job(f"{NAME}-promote")
    contract = json.loads(promote.spec.template.metadata.annotations["finetune.dev/trainer-config"])
    assert contract["promotion"]["approval"]["by"] == "alice"
    assert contract["promotion"]["approval"]["verdictId"] == verdict
    status = scenario.wait_phase("Promoting")
    assert (status["approval"]["by"], status["approval"]["verdictId"]) == ("alice", verdict)
    assert approved_condition(scenario)[:2] == ("True", "Approved")

    # The same manifest again (a retry: delete and apply, approval and all) is a new run and a new
    # verdict; the old approval does not carry over.
    scenario.cluster.kubectl("delete", "ftj", NAME, "-n", scenario.namespace, "--wait=true")
    scenario.cluster.kubectl(  # as the garbage collector would
        "delete",
        "jobs,configmaps,services",
        "-l",
        "app.kubernetes.io/managed-by=finetune-operator",
        "-n",
        scenario.namespace,
    )
    status = submit(scenario, alice, {APPROVE: verdict, APPROVED_BY: "alice"}, seconds=13.0)
    renewed = status["gate"]["verdictId"]
    assert renewed != verdict
    reason, message = eventually(
        lambda: approved_condition(scenario)[1:] if scenario.status.get("conditions") else None, 10
    )
    assert reason == "ApprovalIgnored"
    assert f"names verdict {verdict}" in message, message
    assert f"{NAME}-promote" not in scenario.cluster.job_names(scenario.namespace)
    assert annotate(scenario, alice, approve=renewed, approved_by="alice").returncode == 0
    assert scenario.wait_phase("Promoting")["approval"]["verdictId"] == renewed


@pytest.mark.parametrize("who", ["alice", "bob"])
def test_approval_annotations_need_an_evalgate_ref(scenario: Scenario, who: str) -> None:
    kubeconfig = users(scenario)[who]
    scenario.apply()  # no evalGateRef: nothing to approve, so no approval annotation either
    result = annotate(scenario, kubeconfig, approve="v-0000000000000000", approved_by=who)
    assert result.returncode != 0
    assert "approval annotations apply only to a FineTuneJob with an evalGateRef" in result.stderr
