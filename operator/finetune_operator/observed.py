"""What reconcile sees and what it decides, as plain data: built by the handlers and storage, read by
reconcile."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from finetune_api.gate import EvalReport
from finetune_api.run_layout import CheckpointMarker, DataValidationReport, ProgressReport
from finetune_api.v1alpha1 import FineTuneJob, FineTuneJobStatus
from finetune_api.v1alpha1.evalgate import EvalGate, EvalGateStatus

Manifest = dict[str, Any]


class JobOutcome(StrEnum):
    """How a batch/v1 Job finished: its Complete or Failed condition."""

    COMPLETE = "Complete"
    FAILED = "Failed"


@dataclass(frozen=True)
class JobObservation:
    """A batch/v1 Job the operator created, reduced to what decisions need."""

    name: str
    attempt: int | None = None
    active: int = 0
    suspended: bool = False
    outcome: JobOutcome | None = None
    reason: str = ""  # the finishing condition's reason: DeadlineExceeded, BackoffLimitExceeded...
    message: str = ""
    start_time: datetime | None = None


@dataclass(frozen=True)
class PodObservation:
    name: str
    job_name: str
    phase: str  # Pending, Running, Succeeded, Failed
    waiting_reason: str = ""  # ImagePullBackOff, ErrImagePull, CreateContainerConfigError...
    waiting_message: str = ""
    unschedulable_message: str = ""  # the PodScheduled=False condition's message
    start_time: datetime | None = None  # when the kubelet started it (status.startTime); None before


@dataclass(frozen=True)
class Reference:
    """An object in the job's namespace that the spec names and its pods need, and whether it exists."""

    kind: Literal["Secret", "ServiceAccount"]
    name: str
    field: str  # where it is named, e.g. spec.storage.credentialsSecretRef.name
    found: bool = True


@dataclass(frozen=True)
class StorageObservation:
    data_report: DataValidationReport | None = None
    progress: ProgressReport | None = None
    checkpoints: tuple[CheckpointMarker, ...] = ()
    eval_report: EvalReport | None = None
    eval_problem: str | None = None  # the report exists but cannot be read: the gate fails closed
    eval_report_digest: str | None = None  # sha256 of the report's bytes, part of the verdict's id
    promoted_digest: str | None = None  # sha256 of the promoted version's manifest, once it exists
    error: str | None = None  # S3 unreachable or refusing: decisions that need it wait


@dataclass(frozen=True)
class Observed:
    job: FineTuneJob
    now: datetime
    validation: JobObservation | None = None
    training: tuple[JobObservation, ...] = ()  # every attempt's Job, any order
    pods: tuple[PodObservation, ...] = ()
    config_data: str | None = None  # the trainer ConfigMap's contract, if it exists
    service: bool = False
    storage: StorageObservation = field(default_factory=StorageObservation)
    spec_error: str | None = None  # the spec failed to load into the model
    evaluation: JobObservation | None = None
    promotion: JobObservation | None = None
    gate: EvalGate | None = None  # the referenced EvalGate, looked up only once training is complete
    gate_problem: str | None = None  # why `gate` is None: not found, or a spec the models refuse
    # Why approvals cannot be trusted now (the admission policies that check who approves are missing);
    # None when they are installed. Unobserved counts as missing: approvals fail closed.
    approval_policy_problem: str | None = "the approval admission policies were not observed"
    references: tuple[Reference, ...] = ()  # the Secrets and ServiceAccount the pods need, looked up


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass
class Decision:
    """Children to create (if absent), partial manifests to apply (server-side apply), the new status,
    the events to record, and when to look again.

    `notes` are what a transition had to say that is told with the next event of the same step (one
    event per transition: "data gates passed (...); attempt 1 started: ..."); `event` prefixes them."""

    status: FineTuneJobStatus
    create: list[Manifest] = field(default_factory=list)
    apply: list[Manifest] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    requeue_after: float | None = None
    gate_status: EvalGateStatus | None = None  # the EvalGate's new status (its history), to write first
    gate_resource_version: str | None = None  # ...only over the version it was computed from

    def note(self, message: str, *, keep: bool = False) -> None:
        """What a transition has to say, told with the next event. It replaces what an earlier transition
        of the same step noted (the newer state says more), unless `keep`: then both are told."""
        if not keep:
            self.notes.clear()
        self.notes.append(message)

    def event(self, reason: str, message: str, *, warning: bool = False) -> None:
        """Record an event; the notes pending from earlier transitions of this step come first."""
        told = "; ".join([*self.notes, message])
        self.notes.clear()
        self.events.append(Event("Warning" if warning else "Normal", reason, told))
