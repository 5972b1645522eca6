"""Promoting: a CPU-only Job publishes the judged checkpoint to the run plan's version URI, manifest last.

no Job yet   -> create it with the promote contract (checkpoint, verdict, approval, version)
Job failed   -> Failed: no manifest was written, so nothing is published
spec.suspend -> the Job suspended (or none created), phase Suspended; unsuspend resumes the same Job
Job complete -> the manifest read back, its digest in status -> the run's Succeeded message
"""

from __future__ import annotations

from finetune_api.v1alpha1 import ConditionType, Phase, Reason
from finetune_api.v1alpha1.finetunejob import GateResult, PromotedArtifact
from finetune_operator.builders.names import promotion_job_name
from finetune_operator.builders.workloads import promotion_job
from finetune_operator.observed import JobOutcome
from finetune_operator.reconcile.core import Step, Trained


def phase(step: Step, trained: Trained, gate_name: str, result: GateResult) -> str | None:
    """What was published ("published step N to URI (digest)") once it is; None until then or on failure."""
    job, observed, status = step.job, step.observed, step.decision.status
    status.phase = Phase.PROMOTING
    version = step.plan.version_uri
    best = trained.best
    promotion = observed.promotion
    name = promotion_job_name(job.metadata.name)
    if step.suspended(promotion, f"the promotion of step {best.step} to {version} (job {name})"):
        return None
    if promotion is None:
        contract = step.plan.promote_contract(
            trained.contract, gate_name=gate_name, result=result, approval=status.approval, step=best.step
        )
        step.decision.create.append(promotion_job(job, step.settings, contract))
        message = f"job {name} publishes step {best.step} to {version}"
        step.condition(ConditionType.PROMOTED, "Unknown", Reason.PROMOTION_RUNNING, message)
        step.event(Reason.PROMOTION_RUNNING, message)
        step.wait()
        return None
    if promotion.outcome is None:
        step.scheduling(promotion.name)
        step.wait()
        return None
    if promotion.outcome == JobOutcome.FAILED:
        message = (
            f"job {promotion.name} failed: {promotion.message or promotion.reason or 'no message'}; "
            f"no manifest was written, so nothing under {version} is published"
        )
        step.condition(ConditionType.PROMOTED, "False", Reason.PROMOTION_FAILED, message)
        step.fail(Reason.PROMOTION_FAILED, message)
        return None
    digest = observed.storage.promoted_digest
    if digest is None:
        if observed.storage.error is not None:
            step.poll()
            return None
        message = f"job {promotion.name} finished but {version} has no manifest"
        step.condition(ConditionType.PROMOTED, "False", Reason.PROMOTION_FAILED, message)
        step.fail(Reason.PROMOTION_FAILED, message)
        return None
    status.promoted = PromotedArtifact(uri=version, digest=digest, promoted_at=step.now)
    message = f"published step {best.step} to {version} ({digest})"
    step.condition(ConditionType.PROMOTED, "True", Reason.PROMOTED, message)
    return message
