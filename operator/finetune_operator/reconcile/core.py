"""The core every phase of reconcile shares: one `Step` (what was observed, the run plan, the decision
being built), the verbs phases use to build it (conditions, events, fail, wait, poll), and the one suspend
rule every phase that runs a Job follows (`Step.suspended`).

What a phase hands to the next is its return value (`Trained`), and what a transition has yet to tell
rides on the decision (`Decision.notes`). Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from finetune_api.base import parse_duration
from finetune_api.plan import RunPlan
from finetune_api.trainer_config import TrainContract
from finetune_api.v1alpha1 import ConditionType, FineTuneJob, Phase, Reason
from finetune_api.v1alpha1.conditions import ConditionStatus
from finetune_api.v1alpha1.finetunejob import CheckpointRecord
from finetune_operator.observed import Decision, JobObservation, Manifest, Observed
from finetune_operator.reconcile import status as st
from finetune_operator.settings import Settings

IMAGE_PULL_REASONS = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"})
CONFIG_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError"})


@dataclass(frozen=True)
class Trained:
    """What training hands to the gate and promotion: the contract they extend and the checkpoint."""

    contract: TrainContract
    best: CheckpointRecord
    summary: str  # "3 checkpoints; best at step 200"
    newly: bool  # training completed in this very step (its summary is told with the next event)


@dataclass
class Step:
    """One reconcile call: the observation, the job's run plan, and the decision being built."""

    observed: Observed
    settings: Settings
    plan: RunPlan
    decision: Decision

    @property
    def job(self) -> FineTuneJob:
        return self.observed.job

    @property
    def now(self) -> datetime:
        return self.observed.now

    def condition(self, type_: ConditionType, status: ConditionStatus, reason: Reason, message: str) -> None:
        s = self.decision.status
        s.conditions = st.set_condition(
            s.conditions,
            type_,
            status,
            reason,
            message,
            now=self.now,
            generation=self.job.metadata.generation,
        )

    def event(self, reason: Reason, message: str, *, warning: bool = False) -> None:
        self.decision.event(reason, message, warning=warning)

    def fail(self, reason: Reason, message: str) -> None:
        s = self.decision.status
        s.phase = Phase.FAILED
        s.completion_time = s.completion_time or self.now
        self.condition(ConditionType.FAILED, "True", reason, message)
        self.condition(ConditionType.SUCCEEDED, "False", reason, message)
        self.event(reason, message, warning=True)
        self.decision.requeue_after = None

    def reject(self, reason: Reason, message: str) -> None:
        """The gate or a reviewer said no: terminal, nothing published."""
        s = self.decision.status
        s.phase = Phase.REJECTED
        s.completion_time = s.completion_time or self.now
        self.condition(ConditionType.SUCCEEDED, "False", reason, message)
        self.event(reason, message, warning=True)
        self.decision.requeue_after = None

    def succeed(self, message: str) -> None:
        s = self.decision.status
        s.phase = Phase.SUCCEEDED
        s.completion_time = self.now
        self.condition(ConditionType.SUCCEEDED, "True", Reason.COMPLETED, message)
        self.event(Reason.COMPLETED, message)
        self.decision.requeue_after = None

    def wait(self) -> None:
        """Nothing to read until a child changes (its watch event wakes the loop): only a resync, or
        the max-runtime deadline if that comes sooner."""
        self._requeue(self.settings.resync_seconds)

    def poll(self) -> None:
        """Something only S3 can tell (progress, a report that could not be read): look again soon."""
        self._requeue(self.settings.reconcile_interval_seconds)

    def _requeue(self, seconds: float) -> None:
        deadline = self.deadline
        if deadline is not None:
            seconds = min(seconds, max(1.0, (deadline - self.now).total_seconds()))
        self.decision.requeue_after = seconds

    @property
    def deadline(self) -> datetime | None:
        """runPolicy.maxRuntime after the first training pod started, if both are known."""
        limit = self.job.spec.run_policy.max_runtime
        start = self.decision.status.start_time
        if limit is None or start is None:
            return None
        return start + timedelta(seconds=parse_duration(limit))

    def suspended(self, child: JobObservation | None, what: str, *, kueue: bool = False) -> bool:
        """`spec.suspend`, one rule for every phase that runs a Job (`child`, None before it exists):
        True while the phase must hold (the caller returns), False when it goes on.

        suspend true   the Job is suspended (its pods stop; the Job and what its pods wrote stay), no Job
                       is created, phase Suspended, the Suspended condition names what resumes (`what`)
        suspend false  a suspended Job is resumed (unless Kueue admits it: `kueue`), and a job that was
                       Suspended says what it resumed; the phase then sets its own phase
        A finished Job is past suspending: its phase goes on, and the next one holds before its Job.
        """
        if self.job.spec.suspend and child is not None and child.outcome is not None:
            return False
        if self.job.spec.suspend:
            if child is not None and not child.suspended:
                self.decision.apply.append(suspend_patch(child.name, suspend=True))
            stopped = "pods stopped" if child is not None else "nothing started"
            message = f"suspended: {stopped}; unsuspend to resume {what}"
            if self.job.status.phase != Phase.SUSPENDED:
                self.event(Reason.SUSPENDED_BY_USER, message)
            self.condition(ConditionType.SUSPENDED, "True", Reason.SUSPENDED_BY_USER, message)
            self.decision.status.phase = Phase.SUSPENDED
            self.wait()
            return True
        if child is not None and child.outcome is None and child.suspended and not kueue:
            self.decision.apply.append(suspend_patch(child.name, suspend=False))
        if self.job.status.phase == Phase.SUSPENDED:
            message = f"resumed {what}"
            self.condition(ConditionType.SUSPENDED, "False", Reason.RESUMED, message)
            self.event(Reason.RESUMED, message)
        return False

    def scheduling(self, job_name: str) -> None:
        """Surface why the pods of `job_name` are not running, from the pods themselves."""
        pods = [p for p in self.observed.pods if p.job_name == job_name]
        for pod in pods:
            if pod.waiting_reason in IMAGE_PULL_REASONS:
                reason, detail = Reason.IMAGE_PULL_BACK_OFF, f"{pod.waiting_reason}: {pod.waiting_message}"
            elif pod.waiting_reason in CONFIG_REASONS:
                reason, detail = Reason.INVALID_SPEC, f"{pod.waiting_reason}: {pod.waiting_message}"
            elif pod.phase == "Pending" and pod.unschedulable_message:
                reason, detail = Reason.UNSCHEDULABLE, pod.unschedulable_message
            else:
                continue
            self.condition(ConditionType.PODS_SCHEDULED, "False", reason, f"pod {pod.name}: {detail}")
            return
        if any(p.phase in ("Running", "Succeeded") for p in pods):
            self.condition(
                ConditionType.PODS_SCHEDULED, "True", Reason.SCHEDULED, f"pods of job {job_name} run"
            )


def suspend_patch(name: str, *, suspend: bool) -> Manifest:
    """The server-side apply of a Job's `spec.suspend` (Kubernetes stops or restarts its pods)."""
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": {"suspend": suspend}}
