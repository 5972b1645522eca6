"""The rollout state machine of a ModelDeployment (reconcile.rollout), driven step by step with observations
made by hand: what the route carries, when the rollout advances, and why it stops."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

import pytest

from finetune_api.v1alpha1 import ModelDeployment
from finetune_api.v1alpha1.finetunejob_status import RolloutLink
from finetune_operator.observed_deployment import (
    DeploymentDecision,
    DeploymentObserved,
    PromotedVersion,
    QueryResult,
    RouteObservation,
    ServerObservation,
    Sums,
)
from finetune_operator.reconcile.rollout import reads, reconcile_deployment
from finetune_operator.reconcile.rollout_evidence import evidence, judge_check
from finetune_operator.settings import Settings

T0 = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
STABLE = "sha256:" + "a" * 64
NEW = "sha256:" + "b" * 64
NEWER = "sha256:" + "c" * 64
SETTINGS = Settings()


def mdep(shadow: bool = True, **rollout: Any) -> ModelDeployment:
    spec: dict[str, Any] = {
        "model": {"uri": "s3://models/line/v1/", "digest": STABLE},
        "gateway": {"parentRefs": [{"name": "gw", "namespace": "gateway"}], "hostnames": ["chat.example"]},
        "storage": {"bucket": "models", "endpoint": "http://s3:8333"},
        "prometheus": {"address": "http://prometheus:9090"},
        "rollout": {
            "canary": {
                "steps": [{"weight": 20, "duration": "30s"}, {"weight": 60, "duration": "30s"}],
                "analysis": {"interval": "10s"},
            },
            **rollout,
        },
    }
    if shadow:
        spec["rollout"]["shadow"] = {
            "minSamples": 20,
            "maxDuration": "10m",
            "checks": [
                {
                    "metric": "win_rate",
                    "threshold": {"min": 0.45},
                    "judge": {
                        "type": "string_check",
                        "name": "says-yes",
                        "input": "{{sample.output_text}}",
                        "reference": "yes",
                        "operation": "ilike",
                    },
                }
            ],
        }
    return ModelDeployment.model_validate(
        {"metadata": {"name": "chat", "namespace": "team", "uid": "u-1", "generation": 1}, "spec": spec}
    )


def server(variant: str, digest: str, ready: bool = True) -> ServerObservation:
    return ServerObservation(
        variant=variant,  # type: ignore[arg-type]
        digest=digest,
        generation=1,
        observed_generation=1,
        replicas=1,
        ready_replicas=1 if ready else 0,
        updated_replicas=1,
    )


ROUTE = RouteObservation(accepted=True, generation=1, observed_generation=1)
JOB = PromotedVersion(job="tune-1", uri="s3://models/line/v2/", digest=NEW, promoted_at=T0)


class Driver:
    """Runs reconcile like the runtime does: observe (by hand), decide, keep the status it wrote."""

    def __init__(self, deployment: ModelDeployment, versions: tuple[PromotedVersion, ...] = (JOB,)) -> None:
        self.deployment = deployment
        self.now = T0
        self.versions = versions
        self.servers: dict[str, ServerObservation] = {"stable": server("stable", STABLE)}

    def step(self, seconds: float = 0.0, **observed: Any) -> DeploymentDecision:
        self.now += dt.timedelta(seconds=seconds)
        seen = DeploymentObserved(
            deployment=self.deployment,
            now=self.now,
            servers=dict(self.servers),  # type: ignore[arg-type]
            route=ROUTE,
            versions=self.versions,
            action_problem=None,
        )
        seen = replace(seen, **observed)
        decision = reconcile_deployment(seen, SETTINGS)
        self.deployment = self.deployment.model_copy(update={"status": decision.status})
        self.reads = reads(replace(seen, deployment=self.deployment, now=self.now))
        return decision

    @property
    def status(self) -> Any:
        return self.deployment.status


def route_of(decision: DeploymentDecision) -> dict[str, Any]:
    return next(m for m in decision.apply if m["kind"] == "HTTPRoute")


def weights(decision: DeploymentDecision) -> dict[str, int]:
    rule = route_of(decision)["spec"]["rules"][0]
    return {ref["name"].rsplit("-", 1)[1]: ref["weight"] for ref in rule["backendRefs"]}


def mirror(decision: DeploymentDecision) -> int:
    filters = route_of(decision)["spec"]["rules"][0].get("filters", [])
    return filters[0]["requestMirror"]["percent"] if filters else 0


def shadow_sums(scores: list[float]) -> dict[str, Sums]:
    return {"win_rate": Sums(len(scores), sum(scores), sum(s * s for s in scores))}


def to_canary(driver: Driver) -> None:
    driver.step()  # candidate found: Shadow, candidate objects
    driver.servers["candidate"] = server("candidate", NEW)
    driver.step(1)  # ready: grading starts, mirror on
    driver.step(5, shadow=shadow_sums([0.5] * 30))  # ties only: shown no worse than 0.45
    assert driver.status.stage == "Canary"


def passing_analysis() -> dict[str, QueryResult]:
    return {"error-rate": QueryResult(0.0), "latency-p95-vs-stable": QueryResult(1.0)}


def test_a_new_version_shadows_at_weight_zero_then_mirrors_once_its_servers_are_ready() -> None:
    driver = Driver(mdep())
    first = driver.step()
    assert driver.status.stage == "Shadow"
    assert driver.status.candidate.digest == NEW
    assert driver.status.candidate.job == "tune-1"
    assert weights(first) == {"stable": 100, "candidate": 0}
    assert mirror(first) == 0
    kinds = sorted((m["kind"], m["metadata"]["name"]) for m in first.apply)
    assert ("Deployment", "chat-candidate") in kinds
    assert ("Deployment", "chat-stable") in kinds
    assert first.job_links["tune-1"].stage == "Shadow"
    assert not driver.reads  # nothing to grade before the candidate answers
    driver.servers["candidate"] = server("candidate", NEW)
    second = driver.step(3)
    assert mirror(second) == 100
    assert weights(second)["candidate"] == 0
    assert set(driver.reads.shadow) == {"win_rate"}
    assert 'digest="' + NEW + '"' in driver.reads.shadow["win_rate"][0]


@pytest.mark.parametrize(
    ("scores", "stage", "reason"),
    [
        ([0.5] * 30, "Canary", None),  # ties with stable: shown no worse than 0.45
        ([0.0] * 30, "RolledBack", "ShadowFailed"),  # every reply loses
        ([0.5] * 10, "Shadow", None),  # too few samples: keep grading
        ([1.0, 0.0] * 15, "Shadow", None),  # mean 0.5 but too noisy to show 0.45: keep grading
    ],
)
def test_shadow_decides_on_the_bound_of_the_graded_score(
    scores: list[float], stage: str, reason: str | None
) -> None:
    driver = Driver(mdep())
    driver.step()
    driver.servers["candidate"] = server("candidate", NEW)
    driver.step(1)
    decision = driver.step(5, shadow=shadow_sums(scores))
    assert driver.status.stage == stage
    if stage == "RolledBack":
        assert weights(decision) == {"stable": 100}
        assert mirror(decision) == 0
        assert ("Deployment", "chat-candidate") in decision.delete
        assert driver.status.history[-1].reason == reason
        assert driver.status.history[-1].digest == NEW
        assert decision.job_links["tune-1"].stage == "RolledBack"
    if stage == "Canary":
        assert weights(decision) == {"stable": 80, "candidate": 20}
        assert mirror(decision) == 100


def test_shadow_without_enough_evidence_rolls_back_at_its_max_duration() -> None:
    driver = Driver(mdep())
    driver.step()
    driver.servers["candidate"] = server("candidate", NEW)
    driver.step(1)
    driver.step(60, shadow=shadow_sums([0.5] * 5))
    assert driver.status.stage == "Shadow"
    assert driver.status.summary == "Shadow: 5/20 graded"
    driver.step(600, shadow=shadow_sums([0.5] * 8))
    assert driver.status.stage == "RolledBack"
    assert driver.status.history[-1].reason == "ShadowInconclusive"
    assert "8 graded samples, 20 needed" in driver.status.history[-1].message


def test_a_candidate_that_never_gets_ready_rolls_back() -> None:
    driver = Driver(mdep())
    driver.step()
    driver.servers["candidate"] = server("candidate", NEW, ready=False)
    driver.step(60)
    assert driver.status.stage == "Shadow"
    driver.step(15 * 60)
    assert driver.status.stage == "RolledBack"
    assert driver.status.history[-1].reason == "CandidateNotReady"


def test_canary_steps_up_after_each_duration_with_a_passing_analysis_then_promotes() -> None:
    driver = Driver(mdep())
    to_canary(driver)
    assert driver.status.step == 1
    assert driver.status.weights.candidate == 20
    driver.step(5)
    assert not driver.reads  # next analysis due 10 s after the step started
    driver.step(5)
    assert set(driver.reads.analysis) == {"error-rate", "latency-p95-vs-stable"}
    decision = driver.step(0, analysis=passing_analysis(), shadow=shadow_sums([0.5] * 40))
    assert driver.status.step == 1  # duration 30 s not over
    assert [a.metric for a in driver.status.analyses][-3:] == [
        "error-rate",
        "latency-p95-vs-stable",
        "shadow/win_rate",
    ]
    for _ in range(2):
        decision = driver.step(10, analysis=passing_analysis(), shadow=shadow_sums([0.5] * 40))
    assert driver.status.step == 2
    assert weights(decision) == {"stable": 40, "candidate": 60}
    for _ in range(3):
        decision = driver.step(10, analysis=passing_analysis(), shadow=shadow_sums([0.5] * 40))
    assert driver.status.stage == "Promoting"
    assert weights(decision) == {"stable": 0, "candidate": 100}
    assert mirror(decision) == 0
    stable = next(
        m for m in decision.apply if m["kind"] == "Deployment" and m["metadata"]["name"] == "chat-stable"
    )
    assert stable["spec"]["template"]["metadata"]["annotations"]["finetune.dev/model-digest"] == STABLE
    decision = driver.step(3)  # the route carries it: stable moves to the candidate's version
    stable = next(
        m for m in decision.apply if m["kind"] == "Deployment" and m["metadata"]["name"] == "chat-stable"
    )
    assert stable["spec"]["template"]["metadata"]["annotations"]["finetune.dev/model-digest"] == NEW
    assert weights(decision) == {"stable": 0, "candidate": 100}
    driver.servers["stable"] = server("stable", NEW)
    decision = driver.step(3)
    assert driver.status.stage == "Succeeded"
    assert driver.status.stable.digest == NEW
    assert weights(decision) == {"stable": 100}
    assert mirror(decision) == 0
    assert set(decision.delete) == {
        ("Deployment", "chat-candidate"),
        ("Service", "chat-candidate"),
        ("ConfigMap", "chat-candidate-serve"),
    }
    assert decision.job_links["tune-1"].stage == "Succeeded"


def test_a_failed_analysis_rolls_back_in_the_same_decision() -> None:
    driver = Driver(mdep())
    to_canary(driver)
    decision = driver.step(
        10, analysis={"error-rate": QueryResult(0.3), "latency-p95-vs-stable": QueryResult(1.0)}
    )
    assert driver.status.stage == "RolledBack"
    assert weights(decision) == {"stable": 100}
    assert mirror(decision) == 0
    assert "error-rate = 0.3, outside the range (at most 0.01)" in driver.status.history[-1].message
    assert decision.events[-1].type == "Warning"
    assert decision.events[-1].reason == "AnalysisFailed"


def test_failure_limit_tolerates_that_many_failed_analyses() -> None:
    driver = Driver(
        mdep(
            canary={
                "steps": [{"weight": 20, "duration": "1m"}],
                "analysis": {"interval": "10s", "failureLimit": 1},
            }
        )
    )
    to_canary(driver)
    bad = {"error-rate": QueryResult(0.3), "latency-p95-vs-stable": QueryResult(1.0)}
    driver.step(10, analysis=bad)
    assert driver.status.stage == "Canary"
    assert driver.status.failed_analyses == 1
    driver.step(10, analysis=bad)
    assert driver.status.stage == "RolledBack"


def test_no_data_is_never_a_pass_and_counts_as_a_failure_after_the_inconclusive_limit() -> None:
    driver = Driver(mdep())
    to_canary(driver)
    empty = {"error-rate": QueryResult(None), "latency-p95-vs-stable": QueryResult(None)}
    for _ in range(2):
        driver.step(10, analysis=empty)
        assert driver.status.stage == "Canary"
        assert driver.status.step == 1
    driver.step(10, analysis=empty)
    assert driver.status.stage == "RolledBack"
    assert driver.status.history[-1].reason == "AnalysisFailed"


def test_a_live_score_shown_worse_during_the_canary_rolls_back() -> None:
    driver = Driver(mdep())
    to_canary(driver)
    driver.step(10, analysis=passing_analysis(), shadow=shadow_sums([0.5] * 30 + [0.0] * 60))
    assert driver.status.stage == "RolledBack"
    assert "shadow/win_rate" in driver.status.analyses[-1].metric


def test_without_shadow_the_canary_starts_once_the_candidate_answers() -> None:
    driver = Driver(mdep(shadow=False))
    decision = driver.step()
    assert driver.status.stage == "Canary"
    assert driver.status.summary == "Canary: candidate starting"
    assert weights(decision) == {"stable": 100, "candidate": 0}
    assert not driver.reads  # nothing to analyse before step 1
    driver.servers["candidate"] = server("candidate", NEW)
    decision = driver.step(3)
    assert driver.status.step == 1
    assert weights(decision) == {"stable": 80, "candidate": 20}
    assert mirror(decision) == 0


def test_restart_mid_canary_reapplies_identical_manifests() -> None:
    driver = Driver(mdep())
    to_canary(driver)
    first = driver.step(2)
    again = driver.step(0)
    assert first.apply == again.apply
    assert driver.status.step == 1


@pytest.mark.parametrize("action", ["abort", "promote", "resume", "dance"])
def test_manual_actions_are_acted_on_once_and_recorded_with_the_user(action: str) -> None:
    driver = Driver(mdep())
    to_canary(driver)
    decision = driver.step(1, action=action, action_by="alice")
    assert decision.clear_action
    entry = next(h for h in reversed(driver.status.history) if h.by == "alice")
    expected = {"abort": "RolledBack", "promote": "Promoting", "resume": "Canary", "dance": "Canary"}[action]
    assert driver.status.stage == expected
    if action == "abort":
        assert entry.reason == "Aborted"
        assert weights(decision) == {"stable": 100}
    if action == "promote":
        assert entry.reason == "PromotedByUser"
    if action in ("dance", "resume"):  # unknown; nothing paused
        assert entry.reason == "ActionIgnored"


def test_pause_holds_every_advance_but_not_the_rollback() -> None:
    driver = Driver(mdep())
    to_canary(driver)
    for _ in range(4):
        decision = driver.step(10, action="pause", action_by="bob", analysis=passing_analysis())
    assert driver.status.paused
    assert driver.status.step == 1
    assert not decision.clear_action
    assert any(h.reason == "Paused" and h.by == "bob" for h in driver.status.history)
    bad = {"error-rate": QueryResult(0.5), "latency-p95-vs-stable": QueryResult(1.0)}
    driver.step(10, action="pause", action_by="bob", analysis=bad)
    assert driver.status.stage == "RolledBack"


def test_actions_are_ignored_while_the_admission_policy_is_missing() -> None:
    driver = Driver(mdep())
    to_canary(driver)
    decision = driver.step(1, action="abort", action_by="mallory", action_problem="policy not installed")
    assert driver.status.stage == "Canary"
    assert not decision.clear_action
    paused = next(c for c in driver.status.conditions if c.type == "Paused")
    assert paused.reason == "ActionIgnored"
    assert "policy not installed" in paused.message


def test_pause_step_waits_for_resume() -> None:
    driver = Driver(
        mdep(
            canary={
                "steps": [
                    {"weight": 20, "duration": "10s"},
                    {"pause": True},
                    {"weight": 50, "duration": "10s"},
                ],
                "analysis": {"interval": "10s"},
            }
        )
    )
    to_canary(driver)
    driver.step(10, analysis=passing_analysis(), shadow=shadow_sums([0.5] * 40))
    assert driver.status.step == 2
    assert driver.status.weights.candidate == 20
    for _ in range(3):
        driver.step(10, analysis=passing_analysis(), shadow=shadow_sums([0.5] * 40))
    assert driver.status.step == 2
    driver.step(1, action="resume", action_by="carol")
    assert driver.status.step == 3
    assert driver.status.weights.candidate == 50


def test_a_rolled_back_version_is_never_retried_and_a_newer_one_goes_next() -> None:
    driver = Driver(mdep())
    driver.step()
    driver.step(1, action="abort", action_by="alice")
    assert driver.status.stage == "RolledBack"
    driver.step(60)
    assert driver.status.stage == "RolledBack"  # the aborted version stays out
    newer = PromotedVersion(
        job="tune-2", uri="s3://models/line/v3/", digest=NEWER, promoted_at=T0 + dt.timedelta(hours=1)
    )
    rolled = replace(JOB, link=RolloutLink(deployment="chat", digest=NEW, stage="RolledBack"))
    driver.versions = (rolled, newer)
    driver.step(60)
    assert driver.status.stage == "Shadow"
    assert driver.status.candidate.digest == NEWER


def test_a_new_spec_model_rolls_out_like_a_promoted_version() -> None:
    driver = Driver(mdep(), versions=())
    driver.step()
    assert driver.status.stage == "Idle"
    assert driver.status.stable.digest == STABLE
    changed = mdep()
    changed.spec.model.digest = NEWER
    driver.deployment = driver.deployment.model_copy(update={"spec": changed.spec})
    driver.step(1)
    assert driver.status.stage == "Shadow"
    assert driver.status.candidate.digest == NEWER
    assert driver.status.candidate.job is None


def test_evidence_bounds_by_hand() -> None:
    # 30 scores of 0 and 1 alternating: mean 0.5, sample variance 30*0.25/29, z(0.95)=1.6449
    found = evidence(Sums(30, 15, 15), 0.95)
    half = 1.6448536 * ((30 * 0.25 / 29) / 30) ** 0.5
    assert found.mean == pytest.approx(0.5)
    assert found.lower == pytest.approx(0.5 - half, abs=1e-6)
    check = mdep().spec.rollout.shadow.checks[0]  # type: ignore[union-attr]
    assert judge_check(check, Sums(30, 15, 15), 0.95, 20).passed is None
    assert judge_check(check, Sums(30, 15, 7.5), 0.95, 20).passed is True
    assert judge_check(check, Sums(30, 3, 3), 0.95, 20).passed is False
    assert judge_check(check, Sums(10, 5, 2.5), 0.95, 20).passed is None  # too few


def test_an_older_version_is_never_rolled_out_after_a_newer_one() -> None:
    older = PromotedVersion(
        job="tune-0", uri="s3://models/line/v0/", digest=NEWER, promoted_at=T0 - dt.timedelta(hours=1)
    )
    driver = Driver(mdep(shadow=False), versions=(older, JOB))
    driver.step()
    assert driver.status.candidate.digest == NEW  # the newest
    driver.step(1, action="abort", action_by="alice")
    driver.step(60)
    assert driver.status.stage == "RolledBack"  # tune-0 is older than what was tried: superseded


def test_promote_is_refused_while_the_candidate_is_not_ready() -> None:
    driver = Driver(mdep())
    driver.step()
    decision = driver.step(1, action="promote", action_by="alice")
    assert driver.status.stage == "Shadow"
    assert decision.clear_action
    assert "not ready" in driver.status.history[-1].message


def test_resume_written_over_a_pause_ends_it_without_an_ignored_action() -> None:
    driver = Driver(mdep())
    to_canary(driver)
    driver.step(1, action="pause", action_by="bob")
    driver.step(1, action="resume", action_by="bob")
    assert not driver.status.paused
    reasons = [h.reason for h in driver.status.history[-2:]]
    assert reasons[-1] == "Resumed"
    assert "ActionIgnored" not in reasons


def test_a_new_spec_model_mid_rollout_supersedes_the_candidate() -> None:
    driver = Driver(mdep())
    to_canary(driver)
    changed = mdep()
    changed.spec.model.digest = NEWER
    driver.deployment = driver.deployment.model_copy(update={"spec": changed.spec})
    decision = driver.step(1)
    assert any(h.reason == "Superseded" for h in driver.status.history)
    assert driver.status.stage == "Shadow"
    assert driver.status.candidate.digest == NEWER
    assert decision.delete == []  # the new candidate takes the old one's objects
    candidate = next(
        m for m in decision.apply if m["metadata"]["name"] == "chat-candidate" and m["kind"] == "Deployment"
    )
    assert candidate["spec"]["template"]["metadata"]["annotations"]["finetune.dev/model-digest"] == NEWER
    assert weights(decision) == {"stable": 100, "candidate": 0}
    assert mirror(decision) == 0
