"""ValidatingData: a CPU-only Job runs the data gates before any GPU is requested.

no Job yet        -> create it (its contract in the pod's annotation), phase ValidatingData
Job running       -> surface pod problems, wait for its watch event
spec.suspend      -> the Job suspended (or none created), phase Suspended; unsuspend resumes the same Job
Job finished      -> read the data report: passed -> DataValidated True, the row count for "auto";
                     failed, or no report -> Failed with the rules that failed
"""

from __future__ import annotations

from finetune_api.v1alpha1 import ConditionType, Phase, Reason
from finetune_operator.builders.names import validation_job_name
from finetune_operator.builders.workloads import validation_job
from finetune_operator.observed import JobOutcome
from finetune_operator.reconcile import status as st
from finetune_operator.reconcile.core import Step


def phase(step: Step) -> int | None:
    """The validated training row count, or None while validation runs or after it failed."""
    observed, status = step.observed, step.decision.status
    passed = st.condition(status.conditions, ConditionType.DATA_VALIDATED)
    if passed is not None and passed.status == "True" and status.data_report is not None:
        return status.data_report.rows.get("training", 0)
    validation = observed.validation
    uri = step.plan.layout.data_report
    name = validation_job_name(step.job.metadata.name)
    if step.suspended(validation, f"the data validation (job {name})"):
        return None
    if validation is None:
        step.decision.create.append(validation_job(step.job, step.settings, step.plan.validate_contract()))
        status.phase = Phase.VALIDATING_DATA
        message = f"job {name} checks the data before any GPU is requested"
        step.condition(ConditionType.DATA_VALIDATED, "Unknown", Reason.VALIDATION_RUNNING, message)
        step.event(Reason.VALIDATION_RUNNING, message)
        step.wait()
        return None
    if validation.outcome is None:
        status.phase = Phase.VALIDATING_DATA
        step.scheduling(validation.name)
        step.wait()
        return None
    report = observed.storage.data_report
    if report is None:
        if observed.storage.error is not None:
            step.condition(
                ConditionType.DATA_VALIDATED,
                "Unknown",
                Reason.VALIDATION_RUNNING,
                f"validation finished; reading {uri} failed: {observed.storage.error}",
            )
            step.poll()
            return None
        outcome = "succeeded" if validation.outcome == JobOutcome.COMPLETE else "failed"
        step.condition(ConditionType.DATA_VALIDATED, "False", Reason.DATA_UNREADABLE, "no data report")
        step.fail(
            Reason.DATA_UNREADABLE,
            f"validation {outcome} without writing {uri} ({validation.message or 'no message'}); "
            f"see kubectl logs job/{validation.name}",
        )
        return None
    status.data_report = st.data_report(report, uri)
    if not report.passed or validation.outcome == JobOutcome.FAILED:
        rules = report.failed_rules or report.problems or [validation.message or "validation failed"]
        message = "data gates failed: " + "; ".join(rules[:5])
        if len(rules) > 5:
            message += f"; and {len(rules) - 5} more in {uri}"
        step.condition(ConditionType.DATA_VALIDATED, "False", Reason.DATA_GATES_FAILED, message)
        step.fail(Reason.DATA_GATES_FAILED, message)
        return None
    rows = report.rows.get("training", 0)
    message = (
        f"{rows} training rows; duplicate rate {report.duplicate_rate:.1%}, leakage {report.leakage_rate:.1%}"
    )
    step.condition(ConditionType.DATA_VALIDATED, "True", Reason.DATA_GATES_PASSED, message)
    step.decision.note(f"data gates passed ({message})")
    return rows
