"""The status of a FineTuneJob, written only by the operator: phase and conditions, the run's progress and
checkpoints, the data report, the gate's result, a reviewer's approval and the promoted version, pinned by
its digest. Types only (pydantic): `finetunejob.py` holds the spec and the kind, and re-exports `__all__`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from finetune_api.base import GROUP, ApiModel, Name, ShortText, Text, TokenLengths, Uri
from finetune_api.v1alpha1.conditions import Condition, Phase, Verdict


class Progress(ApiModel):
    step: int = 0
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    tokens_per_second: float | None = None
    percent: Annotated[int, Field(ge=0, le=100)] | None = None
    summary: ShortText | None = Field(default=None, description='"step/total (percent%)", for kubectl get.')
    eta: datetime | None = None
    remaining: ShortText | None = Field(
        default=None,
        description='Time left at the rate so far, as of updatedAt ("12m", "1h05m"), for kubectl get; '
        "before the first step, the trainer's estimate.",
    )
    stopped_early: Text | None = Field(
        default=None, description="Why training ended before its last step (earlyStopping), when it did."
    )
    updated_at: datetime | None = None


class DataReport(ApiModel):
    rows: dict[str, int] = Field(default_factory=dict, description="Valid rows per split.")
    duplicate_rate: float | None = None
    leakage_rate: float | None = None
    pii_findings: dict[str, int] = Field(default_factory=dict, description="Findings per PII kind.")
    dropped: dict[str, int] = Field(default_factory=dict, description="Rows dropped per reason.")
    failed_rules: Annotated[list[Text], Field(max_length=32)] = Field(default_factory=list)
    tokens: TokenLengths | None = Field(
        default=None, description='Estimated tokens of one training row: what "auto" sizes batches by.'
    )
    report_uri: Uri | None = None


class CheckpointRecord(ApiModel):
    step: Annotated[int, Field(ge=0)]
    uri: Uri
    metrics: dict[str, float] = Field(default_factory=dict)
    created_at: datetime | None = None


MAX_CHECKPOINTS = 20


class MetricResult(ApiModel):
    suite: Name
    metric: ShortText
    value: float | None = None
    threshold: float | None = None
    comparator: Literal["min", "max", "no_regression"] | None = None
    baseline: float | None = None
    passed: bool
    message: Text | None = None


class GateResult(ApiModel):
    verdict: Verdict
    verdict_id: ShortText | None = Field(
        default=None,
        description="Names this verdict (from the judged checkpoint's digest and the report's); an approval "
        "names it.",
    )
    metrics: Annotated[list[MetricResult], Field(max_length=64)] = Field(default_factory=list)
    report_uri: Uri | None = None
    evaluated_at: datetime | None = None


# A reviewer approves or rejects the verdict a FineTuneJob's gate gave, when the gate requires approval, by
# annotating the job with the verdict's id and their own user name, e.g.
#   kubectl annotate ftj NAME finetune.dev/approve=<status.gate.verdictId> finetune.dev/approved-by=alice
# The generated admission policies (crds/admission/approval-policy.yaml) let only the gate's approvers set
# these annotations, and only with their own name; the operator records who, when and which verdict.
APPROVE_ANNOTATION = f"{GROUP}/approve"
APPROVED_BY_ANNOTATION = f"{GROUP}/approved-by"
REJECT_ANNOTATION = f"{GROUP}/reject"
REJECTED_BY_ANNOTATION = f"{GROUP}/rejected-by"
APPROVAL_COMMENT_ANNOTATION = f"{GROUP}/approval-comment"
APPROVAL_ANNOTATIONS = (
    APPROVE_ANNOTATION,
    APPROVED_BY_ANNOTATION,
    REJECT_ANNOTATION,
    REJECTED_BY_ANNOTATION,
    APPROVAL_COMMENT_ANNOTATION,
)


class Approval(ApiModel):
    decision: Literal["Approved", "Rejected"]
    by: ShortText = Field(description="The reviewer's user name, as the API server authenticated it.")
    at: datetime
    verdict_id: ShortText | None = Field(default=None, description="The verdict approved or rejected.")
    comment: Text | None = None


class PromotedArtifact(ApiModel):
    uri: Uri
    digest: Annotated[str, Field(max_length=71)]
    promoted_at: datetime | None = None


class RolloutLink(ApiModel):
    """Where the promoted version stands in the ModelDeployment that rolls it out (spec.deployment)."""

    deployment: Name
    digest: Annotated[str, Field(max_length=71)]
    stage: ShortText = Field(description="The deployment's rollout stage for this version.")
    updated_at: datetime | None = None


class FineTuneJobStatus(ApiModel):
    phase: Phase = Phase.PENDING
    last_phase_transition_time: datetime | None = Field(
        default=None, description="When the job entered its current phase (unset: at its creation)."
    )
    conditions: Annotated[list[Condition], Field(max_length=32)] = Field(default_factory=list)
    observed_generation: int | None = None
    run_id: ShortText | None = None
    start_time: datetime | None = Field(
        default=None,
        description="When the first training pod started (time queued or suspended before it does not "
        "count); runPolicy.maxRuntime and the ETA count from here. Recorded once.",
    )
    completion_time: datetime | None = None
    attempts: Annotated[int, Field(ge=0)] = 0
    progress: Progress | None = None
    data_report: DataReport | None = None
    checkpoints: Annotated[list[CheckpointRecord], Field(max_length=MAX_CHECKPOINTS)] = Field(
        default_factory=list, description=f"The latest {MAX_CHECKPOINTS} checkpoints, oldest first."
    )
    best_checkpoint: CheckpointRecord | None = None
    gate: GateResult | None = None
    approval: Approval | None = None
    promoted: PromotedArtifact | None = None
    rollout: RolloutLink | None = None


__all__ = [
    "APPROVAL_ANNOTATIONS",
    "APPROVAL_COMMENT_ANNOTATION",
    "APPROVED_BY_ANNOTATION",
    "APPROVE_ANNOTATION",
    "MAX_CHECKPOINTS",
    "REJECTED_BY_ANNOTATION",
    "REJECT_ANNOTATION",
    "Approval",
    "CheckpointRecord",
    "DataReport",
    "FineTuneJobStatus",
    "GateResult",
    "MetricResult",
    "Progress",
    "PromotedArtifact",
    "RolloutLink",
]
