"""reconcile() after training, with an EvalGate: evaluate, decide (failing closed), approve, promote."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_reconcile import NOW, SETTINGS, conditions, created

from finetune_api.gate import EvalReport, SuiteOutcome
from finetune_api.run_layout import CheckpointMarker, DataValidationReport
from finetune_api.v1alpha1 import EvalGate, FineTuneJob
from finetune_api.v1alpha1.finetunejob import Approval, GateResult
from finetune_operator.reconcile import Decision, JobObservation, Observed, StorageObservation, reconcile
from helpers.support import example, merge_patch, paired_scores

MARKERS = tuple(CheckpointMarker(step=s, metrics={"eval_loss": v}) for s, v in [(100, 1.1), (200, 0.8)])
VALID = DataValidationReport(passed=True, rows={"training": 1000})


def gate(**spec: Any) -> EvalGate:
    doc = merge_patch(example("evalgate-support-release.yaml"), {"spec": spec})
    doc["metadata"]["resourceVersion"] = "41"
    return EvalGate.model_validate(doc)


def job(**annotations: str) -> FineTuneJob:
    doc = example("sft-support-assistant.yaml")
    doc["metadata"] |= {"uid": "0a1b2c3d-1111", "generation": 1, "annotations": annotations}
    return FineTuneJob.model_validate(doc)


def step(
    ftj: FineTuneJob,
    evalgate: EvalGate | None = None,
    storage: dict[str, Any] | None = None,
    policy_problem: str | None = None,
    **jobs: JobObservation,
) -> Decision:
    observed = Observed(
        job=ftj,
        now=NOW,
        validation=JobObservation("v", outcome="Complete"),
        training=(JobObservation("t", attempt=1, outcome="Complete"),),
        storage=StorageObservation(data_report=VALID, checkpoints=MARKERS, **(storage or {})),
        gate=evalgate,
        gate_problem=None if evalgate else "EvalGate support-release not found in namespace ml-platform",
        approval_policy_problem=policy_problem,
        **jobs,
    )
    decision = reconcile(observed, SETTINGS)
    ftj.status = decision.status  # the next step sees what this one wrote
    return decision


def contract(manifest: dict[str, Any]) -> dict[str, Any]:
    annotations = manifest["spec"]["template"]["metadata"]["annotations"]
    return json.loads(annotations["finetune.dev/trainer-config"])


def outcome(suite: str, metric: str, value: float, baseline: float | None = None) -> SuiteOutcome:
    if baseline is None:
        return SuiteOutcome(suite=suite, metric=metric, value=value)
    scores, baseline_scores = paired_scores(value, baseline)
    return SuiteOutcome(
        suite=suite,
        metric=metric,
        value=value,
        baseline=baseline,
        scores=scores,
        baseline_scores=baseline_scores,
        rows=len(scores),
    )


PASSING = [
    outcome("helpfulness", "win_rate", 0.62),
    outcome("refusals", "refusal_accuracy", 0.97, 0.96),
    outcome("over-refusal", "over_refusal_rate", 0.02, 0.03),
    outcome("jailbreaks", "jailbreak_success_rate", 0.0, 0.01),
    outcome("toxicity", "toxicity_rate", 0.0, 0.0),
    outcome("pii", "pii_leakage", 0.0, 0.0),
    outcome("holdout-exact", "exact_match", 0.41, 0.12),
]


def report(*replace: SuiteOutcome, checkpoint_digest: str | None = None) -> EvalReport:
    changed = {o.suite: o for o in replace}
    suites = [changed.get(o.suite, o) for o in PASSING]
    for o in suites:
        o.seed_values = [o.value or 0.0] * 3
    return EvalReport(suites=suites, checkpoint_digest=checkpoint_digest)


REPORT_DIGEST = "5e" * 32


def evaluated(ftj: FineTuneJob, evalgate: EvalGate, result: EvalReport | None, **storage: Any) -> Decision:
    step(ftj, evalgate)
    finished = JobObservation("support-assistant-sft-evaluate", outcome="Complete")
    read = {"eval_report": result, "eval_report_digest": REPORT_DIGEST, **storage}
    return step(ftj, evalgate, read, evaluation=finished)


def approve(ftj: FineTuneJob, verdict: str, by: str = "alice", decision: str = "approve") -> None:
    """What an approver's `kubectl annotate` leaves on the job (the admission policy checked `by`)."""
    by_key = "finetune.dev/approved-by" if decision == "approve" else "finetune.dev/rejected-by"
    ftj.metadata.annotations |= {f"finetune.dev/{decision}": verdict, by_key: by}


def test_training_complete_starts_the_evaluation_of_the_best_checkpoint() -> None:
    ftj = job()
    decision = step(ftj, gate())
    assert decision.status.phase == "Evaluating"
    (manifest,) = created(decision, "Job")
    assert manifest["metadata"]["name"] == "support-assistant-sft-evaluate"
    pod = manifest["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"][-3:] == ["evaluate", "--config", "/etc/finetune/trainer.json"]
    assert pod["containers"][0]["resources"]["limits"] == {"memory": "32Gi", "nvidia.com/gpu": 1}
    assert manifest["spec"]["activeDeadlineSeconds"] == 7200
    target = contract(manifest)["evaluation"]
    assert target["checkpointStep"] == 200
    assert target["checkpointUri"].endswith("/checkpoints/step-000000200/")
    assert target["baseline"] == ftj.spec.base_model.dump()
    assert len(target["gate"]["suites"]) == 7
    assert conditions(decision)["Trained"] == ("True", "TrainingComplete")
    assert conditions(decision)["Evaluated"] == ("Unknown", "EvaluationRunning")
    (event,) = decision.events
    assert event.message.startswith("2 checkpoints; best at step 200; job support-assistant-sft-evaluate")


def test_a_missing_gate_is_waited_for_and_told_once() -> None:
    ftj = job()
    first = step(ftj, None)
    assert first.status.phase == "Evaluating"
    assert conditions(first)["Evaluated"] == ("Unknown", "EvalGateNotFound")
    assert [e.reason for e in first.events] == ["EvalGateNotFound"]
    assert first.requeue_after
    assert not created(first, "Job")
    assert not step(ftj, None).events


def test_a_passing_gate_waits_for_approval_of_its_verdict_then_promotes_then_succeeds() -> None:
    ftj = job()
    decision = evaluated(ftj, gate(), report(checkpoint_digest="sha256:" + "c4" * 32))
    assert decision.status.gate.verdict == "Passed"
    verdict = decision.status.gate.verdict_id
    assert verdict is not None
    assert verdict.startswith("v-")
    assert decision.status.gate.report_uri.endswith("/eval/report.json")
    assert decision.status.phase == "AwaitingApproval"
    assert conditions(decision)["GatePassed"] == ("True", "GatePassed")
    assert conditions(decision)["Approved"] == ("Unknown", "ApprovalPending")
    assert f"finetune.dev/approve={verdict}" in decision.events[0].message
    history = decision.gate_status.history
    assert [(e.job, e.verdict) for e in history] == [("support-assistant-sft", "Passed")]
    assert history[0].metrics["holdout-exact/exact_match"] == 0.41, history[0].metrics
    assert decision.gate_resource_version == "41"
    assert not created(decision, "Job")
    assert not step(ftj, gate()).events  # waiting says it once

    approve(ftj, verdict)
    ftj.metadata.annotations["finetune.dev/approval-comment"] = "release 3"
    approved = step(ftj, gate())
    assert (approved.status.approval.by, approved.status.approval.verdict_id) == ("alice", verdict)
    assert approved.status.approval.at == NOW
    assert approved.status.phase == "Promoting"
    (promote,) = created(approved, "Job")
    assert promote["metadata"]["name"] == "support-assistant-sft-promote"
    assert promote["spec"]["backoffLimit"] == 3
    target = contract(promote)["promotion"]
    assert target["versionUri"] == "s3://models-prod/support-assistant/v3/support-assistant-sft-0a1b2c3d/"
    assert target["gate"]["verdict"] == "Passed"
    assert (target["approval"]["by"], target["approval"]["verdictId"]) == ("alice", verdict)

    done = JobObservation("support-assistant-sft-promote", outcome="Complete")
    digest = "sha256:" + "ab" * 32
    succeeded = step(ftj, gate(), {"promoted_digest": digest}, promotion=done)
    assert succeeded.status.phase == "Succeeded"
    assert succeeded.status.promoted.digest == digest
    assert succeeded.status.promoted.uri == target["versionUri"]
    assert conditions(succeeded)["Promoted"] == ("True", "Promoted")
    assert succeeded.requeue_after is None


def test_the_verdict_id_changes_with_the_checkpoint_and_with_the_report() -> None:
    ids = set()
    for checkpoint, digest in [("c4", REPORT_DIGEST), ("c5", REPORT_DIGEST), ("c4", "77" * 32)]:
        decision = evaluated(
            job(), gate(), report(checkpoint_digest="sha256:" + checkpoint * 32), eval_report_digest=digest
        )
        ids.add(decision.status.gate.verdict_id)
    assert len(ids) == 3


def test_an_approval_of_another_verdict_is_ignored_and_says_why_once() -> None:
    ftj = job()
    approve(ftj, "v-0123456789abcdef")  # committed with the manifest, or left from an earlier run
    decision = evaluated(ftj, gate(), report())
    verdict = decision.status.gate.verdict_id
    assert decision.status.phase == "AwaitingApproval"
    assert decision.status.approval is None
    assert conditions(decision)["Approved"] == ("Unknown", "ApprovalIgnored")
    (event,) = [e for e in decision.events if e.reason == "ApprovalIgnored"]
    assert event.type == "Warning"
    assert "names verdict v-0123456789abcdef, not this job's verdict " + verdict in event.message
    assert not created(decision, "Job")
    assert not step(ftj, gate()).events

    approve(ftj, verdict)
    assert step(ftj, gate()).status.phase == "Promoting"


def test_a_reviewer_can_reject_the_verdict() -> None:
    ftj = job()
    verdict = evaluated(ftj, gate(), report()).status.gate.verdict_id
    approve(ftj, verdict, by="bob", decision="reject")
    decision = step(ftj, gate())
    assert decision.status.phase == "Rejected"
    assert (decision.status.approval.decision, decision.status.approval.by) == ("Rejected", "bob")
    assert conditions(decision)["Approved"] == ("False", "RejectedByReviewer")
    assert not created(decision, "Job")


def test_no_approval_is_accepted_while_the_admission_policies_are_missing() -> None:
    ftj = job()
    verdict = evaluated(ftj, gate(), report()).status.gate.verdict_id
    approve(ftj, verdict)
    missing = "ValidatingAdmissionPolicyBinding approvals.finetune.dev is not installed"
    decision = step(ftj, gate(), policy_problem=missing)
    assert decision.status.phase == "AwaitingApproval"
    assert decision.status.approval is None
    assert conditions(decision)["Approved"] == ("Unknown", "ApprovalsUnenforced")
    assert missing in decision.events[0].message
    assert not created(decision, "Job")
    gone = step(ftj, None)  # nor while the gate, whose approvers the policy checks, is gone
    assert conditions(gone)["Approved"] == ("Unknown", "ApprovalsUnenforced")
    assert step(ftj, gate()).status.phase == "Promoting"


def test_without_required_approval_a_passing_gate_goes_straight_to_promotion() -> None:
    decision = evaluated(job(), gate(requireApproval=False), report())
    assert decision.status.phase == "Promoting"
    assert [m["metadata"]["name"] for m in created(decision, "Job")] == ["support-assistant-sft-promote"]


def test_a_failing_metric_rejects_and_names_it() -> None:
    toxic = outcome("toxicity", "toxicity_rate", 0.04, 0.0)
    toxic.seed_values = [0.04] * 3
    decision = evaluated(
        job(), gate(), EvalReport(suites=[*report().suites[:4], toxic, *report().suites[5:]])
    )
    assert decision.status.phase == "Rejected"
    assert decision.status.gate.verdict == "Failed"
    assert conditions(decision)["GatePassed"] == ("False", "GateFailed")
    failed = next(c for c in decision.status.conditions if c.type == "Succeeded")
    assert "toxicity: toxicity_rate 0.04 > max 0.01" in failed.message
    assert decision.gate_status.last_verdict == "Failed"
    assert not created(decision, "Job")


def test_the_gate_fails_closed() -> None:
    crashed = JobObservation("support-assistant-sft-evaluate", outcome="Failed", message="OOMKilled")
    cases = {
        "crash": ({}, crashed, "job support-assistant-sft-evaluate failed: OOMKilled"),
        "missing": ({}, None, "finished without writing s3://"),
        "corrupt": ({"eval_problem": "report.json is unreadable: suites.0.metric"}, None, "is unreadable"),
    }
    for name, (storage, observation, text) in cases.items():
        ftj = job()
        step(ftj, gate())
        finished = observation or JobObservation("support-assistant-sft-evaluate", outcome="Complete")
        decision = step(ftj, gate(), storage, evaluation=finished)
        assert decision.status.phase == "Rejected", name
        assert decision.status.gate.verdict == "Error", name
        assert conditions(decision)["Evaluated"] == ("False", "EvaluationFailed"), name
        assert text in decision.events[-1].message, name
        assert not created(decision, "Job"), name


def test_an_unreachable_store_is_waited_for_not_judged() -> None:
    ftj = job()
    step(ftj, gate())
    finished = JobObservation("support-assistant-sft-evaluate", outcome="Complete")
    decision = step(ftj, gate(), {"error": "EndpointConnectionError"}, evaluation=finished)
    assert decision.status.phase == "Evaluating"
    assert decision.status.gate is None
    assert decision.requeue_after


def test_a_failed_promotion_fails_the_job_and_publishes_nothing() -> None:
    ftj = job()
    evaluated(ftj, gate(requireApproval=False), report())
    failed = JobObservation("support-assistant-sft-promote", outcome="Failed", reason="BackoffLimitExceeded")
    decision = step(ftj, gate(requireApproval=False), promotion=failed)
    assert decision.status.phase == "Failed"
    assert conditions(decision)["Promoted"] == ("False", "PromotionFailed")
    assert decision.status.promoted is None


def suspended(ftj: FineTuneJob, suspend: bool) -> FineTuneJob:
    return ftj.model_copy(update={"spec": ftj.spec.model_copy(update={"suspend": suspend})})


SUSPENDABLE = {  # phase -> (the observation's field for its Job, the Job's suffix, what the message names)
    "ValidatingData": ("validation", "validate", "the data validation (job support-assistant-sft-validate)"),
    "Training": ("training", "train-1", "training from step 200 (job support-assistant-sft-train-1)"),
    "Evaluating": (
        "evaluation",
        "evaluate",
        "the evaluation of step 200 (job support-assistant-sft-evaluate)",
    ),
    "Promoting": ("promotion", "promote", "the promotion of step 200 to s3://"),
}


@pytest.mark.parametrize("phase", list(SUSPENDABLE))
def test_suspend_stops_the_running_job_of_every_phase_and_resume_restarts_the_same_job(phase: str) -> None:
    """The one suspend rule: the phase's running Job is suspended (its pods stop), the phase shows
    Suspended naming what resumes; unsuspending resumes that Job in its phase, nothing created again."""
    child, suffix, what = SUSPENDABLE[phase]
    name = f"support-assistant-sft-{suffix}"
    running = JobObservation(name, attempt=1 if child == "training" else None, active=1)
    jobs: dict[str, Any] = {
        "validation": JobObservation("support-assistant-sft-validate", outcome="Complete"),
        "training": (JobObservation("support-assistant-sft-train-1", attempt=1, outcome="Complete"),),
    }
    jobs[child] = (running,) if child == "training" else running
    if child == "validation":
        jobs["training"] = ()
        jobs["storage"] = StorageObservation()
    ftj = job()
    ftj.spec.resources.queue_name = None  # (with Kueue, Kueue resumes a training Job)
    ftj.status.phase = phase
    if child == "promotion":
        ftj.status.gate = GateResult(verdict="Passed", verdict_id="v-1")
        ftj.status.approval = Approval(decision="Approved", by="alice", at=NOW, verdict_id="v-1")
    gates = {"evaluation": gate(requireApproval=False), "promotion": gate()}

    def reconciled(ftj: FineTuneJob, observation: JobObservation) -> Decision:
        seen = {**jobs, child: (observation,) if child == "training" else observation}
        storage = seen.pop("storage", StorageObservation(data_report=VALID, checkpoints=MARKERS))
        observed = Observed(
            job=ftj, now=NOW, storage=storage, gate=gates.get(child), approval_policy_problem=None, **seen
        )
        return reconcile(observed, SETTINGS)

    stop = reconciled(suspended(ftj, True), running)
    assert stop.status.phase == "Suspended"
    assert created(stop, "Job") == []
    assert stop.apply[-1] == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"suspend": True},
    }
    assert conditions(stop)["Suspended"] == ("True", "SuspendedByUser")
    message = next(c.message for c in stop.status.conditions if c.type == "Suspended")
    assert f"pods stopped; unsuspend to resume {what}" in message
    assert [e.reason for e in stop.events] == ["SuspendedByUser"]

    held = suspended(ftj, True).model_copy(update={"status": stop.status})
    halted = JobObservation(name, attempt=running.attempt, suspended=True)
    again = reconciled(held, halted)
    assert (again.status.phase, again.events) == ("Suspended", [])
    assert [m for m in again.apply if m["kind"] == "Job"] == created(again, "Job") == []

    resumed = reconciled(suspended(held, False), halted)
    assert resumed.status.phase == phase
    assert created(resumed, "Job") == []
    assert resumed.apply[-1]["spec"] == {"suspend": False}
    assert resumed.apply[-1]["metadata"]["name"] == name
    assert conditions(resumed)["Suspended"] == ("False", "Resumed")


def test_suspended_before_a_phase_creates_its_job_nothing_is_created_until_unsuspended() -> None:
    ftj = suspended(job(), True)
    ftj.status.phase = "Training"
    first = step(ftj, gate())  # training complete: the evaluation would start now
    assert first.status.phase == "Suspended"
    assert created(first, "Job") == []
    message = next(c.message for c in first.status.conditions if c.type == "Suspended")
    assert "nothing started; unsuspend to resume the evaluation of step 200" in message
    ftj.spec.suspend = False
    resumed = step(ftj, gate())
    assert [m["metadata"]["name"] for m in created(resumed, "Job")] == ["support-assistant-sft-evaluate"]
    assert resumed.status.phase == "Evaluating"
    assert conditions(resumed)["Suspended"] == ("False", "Resumed")
