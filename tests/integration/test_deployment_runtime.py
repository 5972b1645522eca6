"""A ModelDeployment's loop on a real API server, with the rollout's decisions injected (the rollout
reconcile itself is tested on its own): the loop fails, says so on the object, recovers, and then acts in
order (a child applied, a FineTuneJob's rollout link, an event, the consumed action removed, the status
written) with Prometheus read only when the decision asks for it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import yaml

from finetune_api.v1alpha1 import ModelDeploymentStatus
from finetune_api.v1alpha1.modeldeployment_status import RolloutStage
from finetune_operator.handlers import parse
from finetune_operator.handlers.deployments import (
    DEPLOYMENT_INDEXES,
    DeploymentObserver,
    DeploymentRuntime,
)
from finetune_operator.handlers.loops import FAILURES_TO_REPORT
from finetune_operator.kube.client import KubeClient
from finetune_operator.metrics import Metrics
from finetune_operator.observed import Event
from finetune_operator.observed_deployment import DeploymentDecision, DeploymentObserved, PrometheusReads
from finetune_operator.prometheus.client import PrometheusClient
from finetune_operator.settings import Settings
from helpers.kube import Cluster

NAMESPACE = "deployment-loop"
NAME = "assistant"
DIGEST = "sha256:" + "c" * 64
ACTION, BY = "finetune.dev/rollout-action", "finetune.dev/rollout-action-by"


def manifest() -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "annotations": {ACTION: "pause", BY: "admin"}},
        "spec": {
            "model": {"uri": "s3://models/assistant/v1/", "digest": DIGEST},
            "gateway": {"parentRefs": [{"name": "public"}]},
            "storage": {"bucket": "models"},
            "prometheus": {"address": "http://127.0.0.1:1"},
        },
    }


def get(cluster: Cluster) -> dict[str, Any]:
    body: dict[str, Any] = cluster.custom.get_namespaced_custom_object(
        "finetune.dev", "v1alpha1", NAMESPACE, "modeldeployments", NAME
    )
    return body


def condition(body: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in body.get("status", {}).get("conditions", []) if c["type"] == type_), None)


async def drive(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> tuple[list[dict[str, Any]], list[Any]]:
    monkeypatch.setenv("KUBECONFIG", str(cluster.plane.kubeconfig))
    kube = KubeClient.connect()
    metrics = Metrics()
    seen: list[DeploymentObserved] = []
    failures = [ValueError("injected: the decision broke")] * FAILURES_TO_REPORT

    def reads(observed: DeploymentObserved) -> PrometheusReads:
        return PrometheusReads()  # nothing judged: Prometheus (unreachable here) is never asked

    def decide(observed: DeploymentObserved, settings: Settings) -> DeploymentDecision:
        seen.append(observed)
        if failures:
            raise failures.pop()
        status = observed.deployment.status.model_copy(deep=True)
        status.stage, status.paused = RolloutStage.IDLE, observed.action == "pause"
        config = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{NAME}-stable-serve", "namespace": NAMESPACE},
            "data": {"serve.json": "{}"},
        }
        return DeploymentDecision(
            status=status,
            apply=[config],
            delete=[("Deployment", f"{NAME}-candidate")],  # absent: fine
            events=[Event("Normal", "Paused", f"paused by {observed.action_by}")],
            clear_action=observed.action is not None and observed.action_problem is None,
            requeue_after=0.5,
        )

    observer = DeploymentObserver(kube, PrometheusClient.connect(metrics=metrics), Settings())
    runtime = DeploymentRuntime(
        kube, observer, reads_fn=reads, reconcile_fn=decide, catch_up_seconds=0.5, metrics=metrics
    )
    indexes: dict[str, dict[Any, Any]] = {name: {} for name in DEPLOYMENT_INDEXES}
    bodies: list[dict[str, Any]] = []
    try:
        for _ in range(200):
            body = await asyncio.to_thread(get, cluster)
            bodies.append(body)
            runtime.feed(NAMESPACE, NAME, parse.essence(body), indexes)
            recovered = condition(body, "ReconcileError")
            cleared = ACTION not in (body["metadata"].get("annotations") or {})
            if recovered is not None and recovered["status"] == "False" and cleared:
                break
            await asyncio.sleep(0.1)
    finally:
        await runtime.close()
        await observer.prometheus.close()
        await kube.close()
    return bodies, seen


def test_a_deployments_loop_reports_failures_recovers_and_acts(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster.kubectl("create", "namespace", NAMESPACE)
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(manifest()))

    bodies, seen = asyncio.run(drive(cluster, monkeypatch))

    failing = next(
        (c for b in bodies if (c := condition(b, "ReconcileError")) and c["status"] == "True"), None
    )
    assert failing is not None, "the deployment never said its reconcile kept failing"
    assert failing["reason"] == "ReconcileFailing"
    assert "ValueError: injected: the decision broke" in failing["message"]

    final = bodies[-1]
    recovered = condition(final, "ReconcileError")
    assert recovered is not None
    assert (recovered["status"], recovered["reason"]) == ("False", "Reconciled")
    assert ACTION not in (final["metadata"].get("annotations") or {})  # consumed, removed
    assert ModelDeploymentStatus.model_validate(final["status"]).paused

    # the action was trusted: the generated rollout policy is installed in this cluster
    acted = [o for o in seen if o.action == "pause"]
    assert acted
    assert all(o.action_by == "admin" and o.action_problem is None for o in acted)
    assert cluster.kubectl("get", "configmap", f"{NAME}-stable-serve", "-n", NAMESPACE).returncode == 0
    events = cluster.kubectl(
        "get", "events", "-n", NAMESPACE, "--field-selector", f"involvedObject.name={NAME}", "-o", "name"
    )
    assert events.stdout.strip()
