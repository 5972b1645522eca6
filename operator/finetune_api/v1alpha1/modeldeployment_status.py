"""The status of a ModelDeployment, written only by the operator: which version is stable, which is the
candidate and where its rollout stands, the traffic split the route carries now, the evidence each decision
rested on (shadow checks, canary analyses) and a short history of what happened and who did it."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from finetune_api.base import ApiModel, Name, ShortText, Text, Uri
from finetune_api.v1alpha1.conditions import Condition


class RolloutStage(StrEnum):
    IDLE = "Idle"  # the stable version serves everything; no candidate
    SHADOW = "Shadow"  # candidate at weight 0, mirrored and graded
    CANARY = "Canary"  # candidate at a step's weight, analysed every interval
    PROMOTING = "Promoting"  # the stable Deployment takes the candidate's version
    SUCCEEDED = "Succeeded"  # the last rollout promoted its candidate; it is stable now
    ROLLED_BACK = "RolledBack"  # the last rollout stopped; the stable version serves everything

    @property
    def active(self) -> bool:
        return self in (RolloutStage.SHADOW, RolloutStage.CANARY, RolloutStage.PROMOTING)


class DeploymentConditionType(StrEnum):
    READY = "Ready"  # the stable version's servers are ready and the route is accepted
    PROGRESSING = "Progressing"  # True while a rollout runs
    PAUSED = "Paused"  # True while a pause action holds the rollout
    ROLLED_BACK = "RolledBack"  # True after the last rollout rolled back; the reason says why
    RECONCILE_ERROR = "ReconcileError"


class DeploymentReason(StrEnum):
    """Reasons of a ModelDeployment's conditions, events and history entries."""

    # serving
    SERVING = "Serving"
    STABLE_NOT_READY = "StableNotReady"
    ROUTE_NOT_ACCEPTED = "RouteNotAccepted"
    # rollout progress
    CANDIDATE_FOUND = "CandidateFound"
    CANDIDATE_STARTING = "CandidateStarting"
    SHADOW_GRADING = "ShadowGrading"
    SHADOW_PASSED = "ShadowPassed"
    CANARY_STEP = "CanaryStep"
    PROMOTING = "Promoting"
    PROMOTED = "Promoted"
    # why a rollout stopped
    CANDIDATE_NOT_READY = "CandidateNotReady"
    SHADOW_FAILED = "ShadowFailed"  # a check was shown to miss its threshold
    SHADOW_INCONCLUSIVE = "ShadowInconclusive"  # too little evidence within maxDuration
    ANALYSIS_FAILED = "AnalysisFailed"
    ABORTED = "Aborted"
    SUPERSEDED = "Superseded"  # spec.model changed to another version mid-rollout
    # manual control
    PAUSED = "Paused"
    RESUMED = "Resumed"
    PROMOTED_BY_USER = "PromotedByUser"
    ACTION_IGNORED = "ActionIgnored"  # unknown action, or actions unenforced (admission policy missing)
    # the operator itself
    INVALID_SPEC = "InvalidSpec"
    RECONCILE_FAILING = "ReconcileFailing"
    RECONCILED = "Reconciled"


class VersionRef(ApiModel):
    uri: Uri
    digest: Annotated[str, Field(max_length=71)]
    job: Name | None = Field(default=None, description="The FineTuneJob that promoted this version, if any.")
    since: datetime | None = Field(default=None, description="When it became stable or the candidate.")


class Weights(ApiModel):
    stable: Annotated[int, Field(ge=0, le=100)] = 100
    candidate: Annotated[int, Field(ge=0, le=100)] = 0


class CheckResult(ApiModel):
    """A shadow check's evidence: the candidate's mean over `samples` graded requests and the one-sided
    bound at the policy's confidence that the threshold is held to."""

    metric: ShortText
    samples: Annotated[int, Field(ge=0)] = 0
    value: float | None = None
    bound: float | None = None
    passed: bool | None = Field(default=None, description="None while the evidence is too thin to decide.")
    message: Text | None = None


class AnalysisResult(ApiModel):
    """One analysis of one metric at one canary step."""

    time: datetime
    step: Annotated[int, Field(ge=1)]
    metric: ShortText
    value: float | None = Field(default=None, description="None: the query returned no data.")
    min: float | None = None
    max: float | None = None
    passed: bool | None = Field(default=None, description="None: inconclusive (no data).")
    message: Text | None = None


class HistoryEntry(ApiModel):
    time: datetime
    reason: Annotated[str, Field(max_length=64)]
    message: Text = ""
    digest: Annotated[str, Field(max_length=71)] | None = None
    by: ShortText | None = Field(
        default=None, description="The user behind a manual action, as the API server authenticated them."
    )


MAX_ANALYSES = 20
MAX_HISTORY = 20


class ModelDeploymentStatus(ApiModel):
    stage: RolloutStage = RolloutStage.IDLE
    summary: ShortText | None = Field(default=None, description='For humans: "Canary step 2 of 3 (20%)".')
    step: Annotated[int, Field(ge=1)] | None = Field(default=None, description="Canary step, 1-based.")
    steps: Annotated[int, Field(ge=0)] | None = None
    stage_started_at: datetime | None = None
    step_started_at: datetime | None = None
    paused: bool = False
    stable: VersionRef | None = None
    candidate: VersionRef | None = None
    weights: Weights = Field(default_factory=Weights)
    mirror_percent: Annotated[int, Field(ge=0, le=100)] = 0
    shadow: Annotated[list[CheckResult], Field(max_length=8)] = Field(
        default_factory=list, description="The shadow checks' latest evidence for the current candidate."
    )
    analyses: Annotated[list[AnalysisResult], Field(max_length=MAX_ANALYSES)] = Field(
        default_factory=list, description=f"The latest {MAX_ANALYSES} analysis results, oldest first."
    )
    last_analysis_at: datetime | None = None
    failed_analyses: Annotated[int, Field(ge=0)] = 0
    inconclusive_in_a_row: Annotated[int, Field(ge=0)] = 0
    spec_model_digest: Annotated[str, Field(max_length=71)] | None = Field(
        default=None, description="The spec.model digest last acted on (a change starts a rollout)."
    )
    history: Annotated[list[HistoryEntry], Field(max_length=MAX_HISTORY)] = Field(
        default_factory=list, description=f"The latest {MAX_HISTORY} events of this deployment, oldest first."
    )
    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(default_factory=list)
    observed_generation: int | None = None


__all__ = [
    "MAX_ANALYSES",
    "MAX_HISTORY",
    "AnalysisResult",
    "CheckResult",
    "DeploymentConditionType",
    "DeploymentReason",
    "HistoryEntry",
    "ModelDeploymentStatus",
    "RolloutStage",
    "VersionRef",
    "Weights",
]
