"""Status vocabulary: phases, condition types and reasons, and the Condition type itself.

Conditions are for machines (`kubectl wait --for=condition=Succeeded`, Argo CD health); the phase is a
one-word summary for humans. Every reason is a PascalCase constant defined here, so the operator, the
tests and the docs share one spelling; every reason here is used, and the operator uses no other.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from finetune_api.base import PASCAL_CASE, ApiModel


class Phase(StrEnum):
    PENDING = "Pending"
    VALIDATING_DATA = "ValidatingData"
    TRAINING = "Training"
    EVALUATING = "Evaluating"
    AWAITING_APPROVAL = "AwaitingApproval"
    PROMOTING = "Promoting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    REJECTED = "Rejected"
    SUSPENDED = "Suspended"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_PHASES


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.REJECTED})


class Verdict(StrEnum):
    """An EvalGate's verdict: Passed; Failed (a check failed); Error (no usable evidence, failing closed)."""

    PASSED = "Passed"
    FAILED = "Failed"
    ERROR = "Error"


class ConditionType(StrEnum):
    """Condition types of a FineTuneJob. Each is True, False or Unknown, never absent once reached."""

    DATA_VALIDATED = "DataValidated"  # the data gates ran and passed
    TRAINED = "Trained"  # training completed and a best checkpoint is recorded
    PODS_SCHEDULED = "PodsScheduled"  # False while a pod is stuck Pending (reason from the pod)
    EVALUATED = "Evaluated"  # the EvalGate suites ran and a verdict exists
    GATE_PASSED = "GatePassed"  # every gate passed
    APPROVED = "Approved"  # a reviewer approved (only when the gate requires approval)
    PROMOTED = "Promoted"  # the artifact is published with its manifest
    SUSPENDED = "Suspended"
    # every Secret and ServiceAccount the job names exists; False (no new pod is started) until they do
    REFERENCES_RESOLVED = "ReferencesResolved"
    SUCCEEDED = "Succeeded"  # terminal: trained (and, with a gate, promoted)
    FAILED = "Failed"  # terminal: the reason says what to change
    RECONCILE_ERROR = "ReconcileError"  # True while the operator keeps failing to reconcile the job


class Reason(StrEnum):
    """Condition reasons. A Failed condition's reason tells the user what kind of change is needed."""

    # progress
    VALIDATION_RUNNING = "ValidationRunning"
    DATA_GATES_PASSED = "DataGatesPassed"
    TRAINING_RUNNING = "TrainingRunning"
    TRAINING_COMPLETE = "TrainingComplete"
    RETRYING = "Retrying"
    EVALUATION_RUNNING = "EvaluationRunning"
    GATE_PASSED = "GatePassed"
    APPROVAL_PENDING = "ApprovalPending"
    APPROVAL_IGNORED = "ApprovalIgnored"  # an approval that names another verdict (or none yet)
    APPROVALS_UNENFORCED = "ApprovalsUnenforced"  # approvals cannot be trusted: policy or gate missing
    APPROVED = "Approved"
    PROMOTION_RUNNING = "PromotionRunning"
    PROMOTED = "Promoted"
    COMPLETED = "Completed"
    SUSPENDED_BY_USER = "SuspendedByUser"
    RESUMED = "Resumed"
    SCHEDULED = "Scheduled"
    REFERENCES_RESOLVED = "ReferencesResolved"
    # waiting on the cluster
    SECRET_NOT_FOUND = "SecretNotFound"  # a Secret the spec names does not exist (yet)
    SERVICE_ACCOUNT_NOT_FOUND = "ServiceAccountNotFound"  # the pods' ServiceAccount does not exist (yet)
    UNSCHEDULABLE = "Unschedulable"
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    QUEUED = "Queued"
    # user must change something
    INVALID_SPEC = "InvalidSpec"
    EVAL_GATE_NOT_FOUND = "EvalGateNotFound"
    DATA_GATES_FAILED = "DataGatesFailed"
    DATA_UNREADABLE = "DataUnreadable"
    # the run itself failed
    TRAINING_FAILED = "TrainingFailed"
    RETRY_LIMIT_EXCEEDED = "RetryLimitExceeded"
    MAX_RUNTIME_EXCEEDED = "MaxRuntimeExceeded"
    EVALUATION_FAILED = "EvaluationFailed"
    GATE_FAILED = "GateFailed"
    REJECTED_BY_REVIEWER = "RejectedByReviewer"
    PROMOTION_FAILED = "PromotionFailed"
    # the operator itself
    RECONCILE_FAILING = "ReconcileFailing"
    RECONCILED = "Reconciled"
    CLEANUP_SKIPPED = "CleanupSkipped"
    CLEANUP_ABANDONED = "CleanupAbandoned"


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """The standard Kubernetes condition (metav1.Condition)."""

    type: Annotated[str, Field(min_length=1, max_length=316)]
    status: ConditionStatus
    reason: Annotated[str, Field(min_length=1, max_length=1024), PASCAL_CASE]
    message: Annotated[str, Field(max_length=32768)] = ""
    last_transition_time: datetime
    observed_generation: Annotated[int, Field(ge=0)] | None = None
