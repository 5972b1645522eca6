"""Evaluating and AwaitingApproval: the EvalGate judges the trained checkpoint, then a reviewer may.

Evaluating: the evaluation Job (suspended by spec.suspend like every phase's Job) scores the candidate
    (the run plan's `candidate`) and the baseline (the plan's `baseline`) on the gate's suites -> the
    plan's `verdict` (failing closed) in status and in the EvalGate's history; failed, or any error ->
    Rejected, nothing published
AwaitingApproval (gate.requireApproval): until an approval or a rejection of this verdict (its id) by
    one of the gate's approvers, as the admission policies vouch; others are ignored with an Event
"""

from __future__ import annotations

from typing import Literal

from finetune_api.gate import failing
from finetune_api.v1alpha1 import ConditionType, Phase, Reason
from finetune_api.v1alpha1.conditions import Verdict
from finetune_api.v1alpha1.evalgate import MAX_HISTORY, EvalGate, EvalGateStatus, Evaluation
from finetune_api.v1alpha1.finetunejob import (
    APPROVAL_COMMENT_ANNOTATION,
    APPROVE_ANNOTATION,
    APPROVED_BY_ANNOTATION,
    REJECT_ANNOTATION,
    REJECTED_BY_ANNOTATION,
    Approval,
    CheckpointRecord,
    GateResult,
)
from finetune_operator.builders.names import evaluation_job_name
from finetune_operator.builders.workloads import evaluation_job
from finetune_operator.observed import JobOutcome
from finetune_operator.reconcile import status as st
from finetune_operator.reconcile.core import Step, Trained


def evaluate(step: Step, trained: Trained, gate_name: str) -> GateResult | None:
    """The gate's verdict once it passed; None while evaluating, or after it failed (then Rejected)."""
    status = step.decision.status
    if status.gate is None:
        _evaluate(step, trained, gate_name)
    if status.gate is None or status.gate.verdict != Verdict.PASSED:
        return None
    return status.gate


def _evaluate(step: Step, trained: Trained, gate_name: str) -> None:
    observed, status = step.observed, step.decision.status
    status.phase = Phase.EVALUATING
    evaluation, gate = observed.evaluation, observed.gate
    name = evaluation_job_name(step.job.metadata.name)
    if step.suspended(evaluation, f"the evaluation of step {trained.best.step} (job {name})"):
        return
    if evaluation is None:
        _start(step, trained, gate_name)
        return
    if evaluation.outcome is None:
        step.scheduling(evaluation.name)
        step.wait()
        return
    storage = observed.storage
    uri = step.plan.layout.eval_report
    if storage.eval_report is None and storage.eval_problem is None and storage.error is not None:
        message = f"evaluation finished; reading {uri} failed: {storage.error}"
        step.condition(ConditionType.EVALUATED, "Unknown", Reason.EVALUATION_RUNNING, message)
        step.poll()
        return
    if gate is None:
        result = GateResult(verdict=Verdict.ERROR, evaluated_at=step.now)
        if storage.eval_report is not None:
            result.report_uri = uri
        lines = [observed.gate_problem or f"EvalGate {gate_name} no longer exists"]
    else:
        failed = None
        if evaluation.outcome == JobOutcome.FAILED:
            failed = evaluation.message or evaluation.reason or "no message"
        result = step.plan.verdict(
            gate.spec,
            storage.eval_report,
            runner=f"job {evaluation.name}",
            report_digest=storage.eval_report_digest,
            unreadable=storage.eval_problem,
            failed=failed,
            at=step.now,
        )
        lines = failing(result)
        step.decision.gate_status = _history(step, gate, result, trained.best)
        step.decision.gate_resource_version = gate.metadata.resource_version
    status.gate = result
    if result.verdict != Verdict.PASSED:
        shown = "; ".join(lines[:5]) + (f"; and {len(lines) - 5} more" if len(lines) > 5 else "")
        failed_checks = result.verdict == Verdict.FAILED
        reason = Reason.GATE_FAILED if failed_checks else Reason.EVALUATION_FAILED
        step.condition(ConditionType.EVALUATED, "True" if failed_checks else "False", reason, shown)
        step.condition(ConditionType.GATE_PASSED, "False", reason, shown)
        verb = "failed" if failed_checks else "could not evaluate"
        step.reject(reason, f"EvalGate {gate_name} {verb}: {shown}")
        return
    message = f"EvalGate {gate_name} passed ({len(result.metrics)} checks); verdict {result.verdict_id}"
    step.condition(ConditionType.EVALUATED, "True", Reason.GATE_PASSED, message)
    step.condition(ConditionType.GATE_PASSED, "True", Reason.GATE_PASSED, message)
    step.decision.note(message)


def _start(step: Step, trained: Trained, gate_name: str) -> None:
    job, observed, status, gate = step.job, step.observed, step.decision.status, step.observed.gate
    if gate is None:
        message = observed.gate_problem or f"EvalGate {gate_name} not found"
        previous = st.condition(status.conditions, ConditionType.EVALUATED)
        if previous is None or previous.reason != Reason.EVAL_GATE_NOT_FOUND:
            step.event(Reason.EVAL_GATE_NOT_FOUND, f"{message}; waiting for it", warning=True)
        step.condition(ConditionType.EVALUATED, "Unknown", Reason.EVAL_GATE_NOT_FOUND, message)
        step.poll()  # EvalGates are not watched: look again
        return
    best = trained.best
    contract = step.plan.evaluate_contract(trained.contract, gate, best.step)
    step.decision.create.append(evaluation_job(job, step.settings, contract, image=job.spec.image))
    name = evaluation_job_name(job.metadata.name)
    suites = len(gate.spec.suites)
    message = f"job {name} evaluates step {best.step} on {suites} suites of EvalGate {gate_name}"
    step.condition(ConditionType.EVALUATED, "Unknown", Reason.EVALUATION_RUNNING, message)
    step.event(Reason.EVALUATION_RUNNING, message)
    step.wait()


def _history(step: Step, gate: EvalGate, result: GateResult, best: CheckpointRecord) -> EvalGateStatus:
    """The gate's status with this evaluation appended (replacing an entry for the same job and
    checkpoint, so a step that is retried does not count twice)."""
    name = step.job.metadata.name
    entry = Evaluation(
        job=name,
        checkpoint=best.uri,
        verdict=Verdict(result.verdict),
        time=step.now,
        metrics={  # the candidate's value per suite (the no-regression checks repeat it)
            f"{m.suite}/{m.metric}": m.value
            for m in result.metrics
            if m.value is not None and m.comparator != "no_regression"
        },
        report_uri=result.report_uri,
    )
    kept = [e for e in gate.status.history if (e.job, e.checkpoint) != (name, best.uri)]
    return gate.status.model_copy(
        update={"history": [*kept, entry][-MAX_HISTORY:], "last_verdict": Verdict(result.verdict)}
    )


def approve(step: Step) -> bool:
    """True once promotion may go ahead: no approval needed (`status.approval` stays unset), or a
    reviewer approved this verdict; False while waiting for one, or after a rejection (then Rejected).

    An approval counts only when it names the current verdict (`status.gate.verdictId`) and the admission
    policies that check who wrote it are installed (`finetune_api.admission`); any other is ignored and an
    Event says why. Nothing is read from an approval but its verdict id, decision, name and comment."""
    job, status, observed = step.job, step.decision.status, step.observed
    if status.approval is not None:
        return status.approval.decision == "Approved"
    if observed.gate is not None and not observed.gate.spec.require_approval:
        return True  # (a gate that disappeared after passing still needs a reviewer: failing closed)
    verdict = status.gate.verdict_id if status.gate is not None else None
    annotations = job.metadata.annotations
    given = _given(annotations)
    if observed.gate is None or observed.approval_policy_problem is not None:
        why = observed.approval_policy_problem or observed.gate_problem or "its EvalGate is missing"
        message = f"approvals cannot be checked, so none is accepted: {why}"
        return _wait(step, Reason.APPROVALS_UNENFORCED, message, warning=True)
    if given is not None and verdict is not None and given[1] == verdict and given[2]:
        decision, _, by = given
        comment = annotations.get(APPROVAL_COMMENT_ANNOTATION)
        status.approval = Approval(
            decision=decision, by=by[:256], at=step.now, verdict_id=verdict, comment=comment
        )
        message = f"verdict {verdict} {decision.lower()} by {by}" + (f": {comment}" if comment else "")
        if decision == "Rejected":
            step.condition(ConditionType.APPROVED, "False", Reason.REJECTED_BY_REVIEWER, message)
            step.reject(Reason.REJECTED_BY_REVIEWER, message)
            return False
        step.condition(ConditionType.APPROVED, "True", Reason.APPROVED, message)
        step.decision.note(message, keep=True)
        return True
    how = (
        f"annotate with {APPROVE_ANNOTATION}={verdict} and {APPROVED_BY_ANNOTATION}=<your user name> to "
        f"promote, or {REJECT_ANNOTATION}={verdict} and {REJECTED_BY_ANNOTATION}=<your user name> to reject"
    )
    if given is not None:
        decision, named, _ = given
        what = "approval" if decision == "Approved" else "rejection"
        message = (
            f"ignored: the {what} names verdict {named or '(none)'}, "
            f"not this job's verdict {verdict}; an approval given before the verdict, or for an earlier one, "
            f"does not carry over; {how}"
            if named != verdict
            else f"ignored: the {what} of verdict {verdict} does not say who gave it; {how}"
        )
        return _wait(step, Reason.APPROVAL_IGNORED, message, warning=True)
    return _wait(step, Reason.APPROVAL_PENDING, f"the gate passed and requires approval: {how}")


def _given(annotations: dict[str, str]) -> tuple[Literal["Approved", "Rejected"], str, str] | None:
    """The decision the annotations carry: (decision, verdict id named, by); a rejection wins."""
    for decision, key, by in (
        ("Rejected", REJECT_ANNOTATION, REJECTED_BY_ANNOTATION),
        ("Approved", APPROVE_ANNOTATION, APPROVED_BY_ANNOTATION),
    ):
        if annotations.get(key) or annotations.get(by):
            return decision, annotations.get(key, ""), annotations.get(by, "")  # type: ignore[return-value]
    return None


def _wait(step: Step, reason: Reason, message: str, *, warning: bool = False) -> bool:
    """AwaitingApproval with the Approved condition saying why; the Event only when that changes."""
    status = step.decision.status
    previous = st.condition(status.conditions, ConditionType.APPROVED)
    if previous is None or (previous.reason, previous.message) != (reason, message):
        step.event(reason, message, warning=warning)
    step.condition(ConditionType.APPROVED, "Unknown", reason, message)
    status.phase = Phase.AWAITING_APPROVAL
    step.wait()  # an annotation is a change of the object itself, which wakes the loop
    return False
