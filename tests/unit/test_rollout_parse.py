"""What the ModelDeployment indexes keep of their objects (handlers.rollout_parse): a model server
Deployment, the HTTPRoute's parents' conditions, the version a FineTuneJob promoted."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from finetune_operator.handlers import parse, rollout_parse
from finetune_operator.observed_deployment import RouteObservation, ServerObservation

DIGEST = "sha256:" + "b" * 64


def server(variant: str = "candidate", **status: int) -> dict[str, Any]:
    return {
        "metadata": {"name": f"m-{variant}", "generation": 3, "labels": {"finetune.dev/variant": variant}},
        "spec": {"template": {"metadata": {"annotations": {"finetune.dev/model-digest": DIGEST}}}},
        "status": status,
    }


def test_a_model_server_is_its_variant_digest_and_rollout_progress() -> None:
    body = server(observedGeneration=3, replicas=2, readyReplicas=2, updatedReplicas=2)
    observed = rollout_parse.server_observation(body)
    assert observed == ServerObservation("candidate", DIGEST, 3, 3, 2, 2, 2)
    assert observed.ready
    fresh = rollout_parse.server_observation(server("stable"))
    assert fresh == ServerObservation("stable", DIGEST, generation=3)
    assert not fresh.ready
    assert rollout_parse.server_observation(server("blue")) is None


def parent(name: str, **conditions: str) -> dict[str, Any]:
    return {
        "parentRef": {"name": name},
        "conditions": [
            {"type": t, "status": s, "reason": "R" + t, "message": f"{t} says {s}", "observedGeneration": 2}
            for t, s in conditions.items()
        ],
    }


@pytest.mark.parametrize(
    ("parents", "accepted", "message"),
    [
        ([], None, ""),
        ([parent("public", Accepted="True", ResolvedRefs="True")], True, ""),
        (
            [parent("public", Accepted="True", ResolvedRefs="True"), parent("internal", Accepted="False")],
            False,
            "Gateway internal: Accepted RAccepted: Accepted says False",
        ),
        (
            [parent("public", Accepted="True", ResolvedRefs="False")],
            False,
            "Gateway public: ResolvedRefs RResolvedRefs: ResolvedRefs says False",
        ),
    ],
)
def test_a_route_is_accepted_only_when_every_parent_accepts_and_resolves_it(
    parents: list[dict[str, Any]], accepted: bool | None, message: str
) -> None:
    body = {"metadata": {"generation": 2}, "status": {"parents": parents}}
    observed = rollout_parse.route_observation(body)
    assert observed == RouteObservation(accepted, message, 2, 2 if parents else 0)


def job(phase: str, promoted: bool = True, rollout: dict[str, Any] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if promoted:
        status["promoted"] = {
            "uri": "s3://models/v2/",
            "digest": DIGEST,
            "promotedAt": "2026-01-02T03:04:05Z",
        }
    if rollout is not None:
        status["rollout"] = rollout
    return {"metadata": {"name": "ft-2"}, "spec": {"deployment": {"name": "m"}}, "status": status}


def test_only_a_succeeded_job_with_a_promoted_version_is_a_version_to_roll_out() -> None:
    version = rollout_parse.promoted_version(job("Succeeded"))
    assert version is not None
    assert (version.job, version.uri, version.digest) == ("ft-2", "s3://models/v2/", DIGEST)
    assert version.promoted_at == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert version.link is None
    assert rollout_parse.promoted_version(job("Promoting")) is None
    assert rollout_parse.promoted_version(job("Succeeded", promoted=False)) is None
    linked = rollout_parse.promoted_version(
        job("Succeeded", rollout={"deployment": "m", "digest": DIGEST, "stage": "Canary"})
    )
    assert linked is not None
    assert linked.link is not None
    assert linked.link.stage == "Canary"


def test_a_deployments_essence_loads_back_and_a_refused_spec_keeps_metadata_and_status() -> None:
    body = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {
            "name": "m",
            "namespace": "ns",
            "resourceVersion": "42",
            "annotations": {"finetune.dev/rollout-action": "pause"},
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": {
            "model": {"uri": "s3://models/v1/", "digest": DIGEST},
            "gateway": {"parentRefs": [{"name": "public"}]},
            "storage": {"bucket": "models"},
            "prometheus": {"address": "http://prometheus:9090"},
        },
        "status": {"stage": "Canary", "weights": {"stable": 90, "candidate": 10}},
    }
    essence = parse.essence(body)
    assert "managedFields" not in json.loads(essence)["metadata"]
    deployment, problem = rollout_parse.load(essence)
    assert problem is None
    assert deployment.metadata.resource_version == "42"
    assert rollout_parse.status_of(essence) == deployment.status.dump()
    assert rollout_parse.annotations_of(essence) == {"finetune.dev/rollout-action": "pause"}
    refused, problem = rollout_parse.load(parse.essence({**body, "spec": {"model": {}}}))
    assert problem is not None
    assert "spec.gateway" in problem
    assert refused.status.weights.candidate == 10
