"""Evaluating and AwaitingApproval: the EvalGate judges the trained checkpoint, then a reviewer may.

Evaluating: the evaluation Job scores the candidate (the run plan's `candidate`) and the baseline (the
    plan's `baseline`) on the gate's suites -> the plan's `verdict` (failing closed) in status and in
    the EvalGate's history; failed, or any error -> Rejected, nothing published
AwaitingApproval (gate.requireApproval): until an approved-by or rejected-by annotation
"""

from __future__ import annotations

from finetune_api.gate import failing
from finetune_api.v1alpha1 import ConditionType, Phase, Reason
from finetune_api.v1alpha1.conditions import Verdict
from finetune_api.v1alpha1.evalgate import MAX_HISTORY, EvalGate, EvalGateStatus, Evaluation
from finetune_api.v1alpha1.finetunejob import (
    APPROVAL_COMMENT_ANNOTATION,
    APPROVED_BY_ANNOTATION,
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
    message = f"EvalGate {gate_name} passed ({len(result.metrics)} checks)"
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
    reviewer approved; False while waiting for one, or after a rejection (then Rejected)."""
    job, status, gate = step.job, step.decision.status, step.observed.gate
    if status.approval is not None:
        return status.approval.decision == "Approved"
    if gate is not None and not gate.spec.require_approval:
        return True  # (a gate that disappeared after passing still needs a reviewer: failing closed)
    annotations = job.metadata.annotations
    rejected, approved = annotations.get(REJECTED_BY_ANNOTATION), annotations.get(APPROVED_BY_ANNOTATION)
    comment = annotations.get(APPROVAL_COMMENT_ANNOTATION)
    if rejected:
        status.approval = Approval(decision="Rejected", by=rejected[:256], at=step.now, comment=comment)
        message = f"rejected by {rejected}" + (f": {comment}" if comment else "")
        step.condition(ConditionType.APPROVED, "False", Reason.REJECTED_BY_REVIEWER, message)
        step.reject(Reason.REJECTED_BY_REVIEWER, message)
        return False
    if approved:
        status.approval = Approval(decision="Approved", by=approved[:256], at=step.now, comment=comment)
        message = f"approved by {approved}" + (f": {comment}" if comment else "")
        step.condition(ConditionType.APPROVED, "True", Reason.APPROVED, message)
        step.decision.note(message, keep=True)
        return True
    if status.phase != Phase.AWAITING_APPROVAL:
        message = (
            f"the gate passed and requires approval: annotate with {APPROVED_BY_ANNOTATION}=<name> to "
            f"promote or {REJECTED_BY_ANNOTATION}=<name> to reject"
        )
        step.condition(ConditionType.APPROVED, "Unknown", Reason.APPROVAL_PENDING, message)
        step.event(Reason.APPROVAL_PENDING, message)
    status.phase = Phase.AWAITING_APPROVAL
    step.wait()  # the annotation is a change of the object itself, which wakes the loop
    return False
