"""The Argo CD health scripts as documented: docs/argocd.md holds them exactly as they are in the repository
(helm/finetune-operator/files/health/). What each phase's health is, the integration tests check against
the objects the operator itself writes (helpers/scenario.py records one at each phase)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from finetune_api.v1alpha1.conditions import Condition
from finetune_api.v1alpha1.modeldeployment_status import ModelDeploymentStatus, VersionRef
from helpers.argocd import SCRIPTS, check_health, health
from helpers.support import ROOT, example

DOC = ROOT / "docs" / "argocd.md"


def documented_argocd_cm() -> str:
    """The ```text block of docs/argocd.md that holds the argocd-cm keys."""
    blocks = DOC.read_text().split("```text\n")[1:]
    found = [b.split("```", 1)[0] for b in blocks if b.startswith("data:\n")]
    assert len(found) == 1, f"{DOC.name} should hold one argocd-cm block"
    return found[0]


def test_docs_hold_the_health_scripts_as_they_are() -> None:
    expected = "data:\n" + "".join(
        f"  resource.customizations.health.finetune.dev_{kind}: |\n"
        + "".join(f"    {line}" if line.strip() else line for line in path.read_text().splitlines(True))
        for kind, path in SCRIPTS.items()
    )
    assert documented_argocd_cm() == expected, f"paste this into {DOC.name}:\n{expected}"
    data = yaml.safe_load(documented_argocd_cm())["data"]
    assert data == {
        f"resource.customizations.health.finetune.dev_{kind}": path.read_text()
        for kind, path in SCRIPTS.items()
    }


def test_a_job_the_operator_has_not_seen_yet_is_progressing() -> None:
    job = example("sft-support-assistant.yaml")
    assert "status" not in job
    assert health(job) == ("Progressing", "waiting for the operator to pick the job up")


def test_a_phase_this_script_does_not_know_is_unknown() -> None:
    job = example("sft-support-assistant.yaml") | {"status": {"phase": "Archived"}}  # a later API's phase
    assert health(job) == ("Unknown", "unknown phase Archived")


# --- ModelDeployment ------------------------------------------------------------------------------------

T0, T1 = datetime(2026, 11, 27, 1, 0, tzinfo=UTC), datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
STABLE = VersionRef(uri="s3://models-prod/support-assistant/v2/", digest="sha256:5f2b9a0c7e1d", since=T0)
CANDIDATE = VersionRef(uri="s3://models-prod/support-assistant/v3/", digest="sha256:9c8d7e6f5a4b", job="sft")


def condition(type_: str, value: bool, reason: str, message: str, at: datetime = T0) -> Condition:
    return Condition(
        type=type_,
        status="True" if value else "False",
        reason=reason,
        message=message,
        last_transition_time=at,
    )


def deployment(**status: Any) -> dict[str, Any]:
    """The example ModelDeployment with a status as the operator writes it (camelCase, no nulls)."""
    written = ModelDeploymentStatus.model_validate({"stable": STABLE, **status})
    return example("modeldeployment-chat.yaml") | {
        "status": written.model_dump(mode="json", by_alias=True, exclude_none=True)
    }


SERVING = condition("Ready", True, "Serving", "serving sha256:5f2b9a0c7e1d")
DEPLOYMENTS = {
    "idle and ready": (
        deployment(stage="Idle", summary="Serving: serving 5f2b9a0c7e1d", conditions=[SERVING]),
        ("Healthy", "Serving: serving 5f2b9a0c7e1d"),
    ),
    "promoted and ready": (
        deployment(stage="Succeeded", summary="Promoted: serving 9c8d7e6f5a4b", conditions=[SERVING]),
        ("Healthy", "Promoted: serving 9c8d7e6f5a4b"),
    ),
    "shadow": (
        deployment(
            stage="Shadow", summary="Shadow: 120/300 graded", candidate=CANDIDATE, conditions=[SERVING]
        ),
        ("Progressing", "Shadow: 120/300 graded"),
    ),
    "canary": (
        deployment(
            stage="Canary", summary="Canary step 2 of 4 (25%)", candidate=CANDIDATE, conditions=[SERVING]
        ),
        ("Progressing", "Canary step 2 of 4 (25%)"),
    ),
    "promoting": (
        deployment(stage="Promoting", summary="Promoting", candidate=CANDIDATE, conditions=[SERVING]),
        ("Progressing", "Promoting"),
    ),
    "paused": (
        deployment(
            stage="Canary",
            summary="Canary step 1 of 4 (5%), paused",
            paused=True,
            candidate=CANDIDATE,
            conditions=[SERVING, condition("Paused", True, "Paused", "a pause action holds the rollout")],
        ),
        ("Suspended", "paused by annotation: Canary step 1 of 4 (5%), paused"),
    ),
    "rolled back": (
        deployment(
            stage="RolledBack",
            summary="Rolled back 9c8d7e6f5a4b; serving 5f2b9a0c7e1d",
            candidate=CANDIDATE,
            conditions=[
                SERVING,
                condition("RolledBack", True, "ShadowFailed", "shadow check failed: win_rate 0.310", T1),
            ],
        ),
        ("Degraded", "RolledBack (ShadowFailed): shadow check failed: win_rate 0.310"),
    ),
    "starting, never ready": (
        deployment(
            stage="Idle",
            summary="Serving: serving 5f2b9a0c7e1d",
            conditions=[condition("Ready", False, "StableNotReady", "the stable servers are not ready")],
        ),
        ("Progressing", "Serving: serving 5f2b9a0c7e1d: the stable servers are not ready"),
    ),
    "ready once, not now": (
        deployment(
            stage="Succeeded",
            summary="Promoted: serving 5f2b9a0c7e1d",
            conditions=[condition("Ready", False, "StableNotReady", "the stable servers are not ready", T1)],
        ),
        ("Degraded", "Promoted: serving 5f2b9a0c7e1d: the stable servers are not ready"),
    ),
    "invalid spec": (
        {
            **example("modeldeployment-chat.yaml"),
            "status": {
                "stage": "Idle",
                "conditions": [
                    condition("Ready", False, "InvalidSpec", "spec.rollout: bad").model_dump(
                        mode="json", by_alias=True, exclude_none=True
                    )
                ],
            },
        },
        ("Degraded", "InvalidSpec: spec.rollout: bad"),
    ),
    "the operator failing": (
        deployment(
            stage="Canary",
            summary="Canary step 2 of 4 (25%)",
            candidate=CANDIDATE,
            conditions=[SERVING, condition("ReconcileError", True, "ReconcileFailing", "KubeError: 503", T1)],
        ),
        ("Degraded", "the operator cannot reconcile this deployment: KubeError: 503"),
    ),
}


@pytest.mark.parametrize("case", list(DEPLOYMENTS))
def test_a_deployments_health_follows_its_stage(case: str) -> None:
    obj, wanted = DEPLOYMENTS[case]
    assert health(obj) == wanted
    assert check_health(obj) == wanted  # and the rule the end-to-end tests hold recorded objects to


def test_a_deployment_the_operator_has_not_seen_yet_is_progressing() -> None:
    mdep = example("modeldeployment-chat.yaml")
    assert "status" not in mdep
    assert health(mdep) == ("Progressing", "waiting for the operator to pick the deployment up")


def test_a_stage_this_script_does_not_know_is_unknown() -> None:
    mdep = deployment(stage="Idle", conditions=[SERVING])
    mdep["status"]["stage"] = "Archived"  # a later API's stage
    assert health(mdep) == ("Unknown", "unknown stage Archived")
