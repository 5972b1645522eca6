"""What the operator counts of ModelDeployments (docs/metrics.md): series created at 0 when a deployment is
first seen, a rollout's end and its rollback reason counted once per status write, each new analysis by
metric and result, and the stage and weight gauges computed at scrape time."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from finetune_api.v1alpha1 import ModelDeploymentStatus
from finetune_operator.metrics import DeploymentRow, Metrics, analysis_names

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def status(**fields: Any) -> ModelDeploymentStatus:
    return ModelDeploymentStatus.model_validate(fields)


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(f"finetune_operator_{name}", labels)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


def test_a_new_deployments_series_exist_at_zero(metrics: Metrics) -> None:
    body = {"spec": {"rollout": {"canary": {"analysis": {"metrics": [{"name": "p99"}]}}}}}
    metrics.deployment_seen("ns", analysis_names(body))
    assert sample(metrics, "rollouts_total", namespace="ns", result="Promoted") == 0
    assert sample(metrics, "rollouts_total", namespace="ns", result="RolledBack") == 0
    assert sample(metrics, "rollbacks_total", namespace="ns", reason="AnalysisFailed") == 0
    assert sample(metrics, "rollout_analyses_total", namespace="ns", metric="p99", result="inconclusive") == 0
    assert analysis_names({"spec": {}}) == ("error-rate", "latency-p95-vs-stable")  # the built-in ones
    assert sample(metrics, "prometheus_query_errors_total", reason="timeout") == 0


def test_a_rollback_counts_its_reason_and_new_analyses_count_once(metrics: Metrics) -> None:
    analysis = {"time": NOW.isoformat(), "step": 1, "metric": "error-rate", "value": 0.5, "passed": False}
    empty = {"time": NOW.isoformat(), "step": 1, "metric": "latency", "passed": None}
    canary = status(stage="Canary", analyses=[analysis])
    rolled_back = status(
        stage="RolledBack",
        analyses=[analysis, empty],
        conditions=[
            {"type": "RolledBack", "status": "True", "reason": "AnalysisFailed", "lastTransitionTime": NOW}
        ],
    )
    metrics.record_deployment("ns", canary, rolled_back)
    metrics.record_deployment("ns", rolled_back, rolled_back)  # rewritten: nothing new
    assert sample(metrics, "rollouts_total", namespace="ns", result="RolledBack") == 1
    assert sample(metrics, "rollbacks_total", namespace="ns", reason="AnalysisFailed") == 1
    assert (
        sample(metrics, "rollout_analyses_total", namespace="ns", metric="latency", result="inconclusive")
        == 1
    )
    assert (
        sample(metrics, "rollout_analyses_total", namespace="ns", metric="error-rate", result="failed")
        is None
    )
    metrics.record_deployment("ns", status(stage="Promoting"), status(stage="Succeeded"))
    assert sample(metrics, "rollouts_total", namespace="ns", result="Promoted") == 1


def test_the_stage_and_weight_gauges_follow_the_watch(metrics: Metrics) -> None:
    body = {"status": {"stage": "Canary", "weights": {"stable": 80, "candidate": 20}}}
    assert metrics.deployments.update("ns", "m", DeploymentRow.of(body))
    assert sample(metrics, "modeldeployment_stage", namespace="ns", modeldeployment="m", stage="Canary") == 1
    assert sample(metrics, "modeldeployment_stage", namespace="ns", modeldeployment="m", stage="Idle") == 0
    assert sample(metrics, "modeldeployment_candidate_weight", namespace="ns", modeldeployment="m") == 20
    assert not metrics.deployments.update("ns", "m", DeploymentRow.of({}))
    assert sample(metrics, "modeldeployment_stage", namespace="ns", modeldeployment="m", stage="Idle") == 1
    metrics.deployments.update("ns", "m", None)
    assert sample(metrics, "modeldeployment_candidate_weight", namespace="ns", modeldeployment="m") is None
