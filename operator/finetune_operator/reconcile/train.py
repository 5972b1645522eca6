"""Training: the trainer ConfigMap, then one Job per attempt, until a complete checkpoint is recorded.

"auto" hyperparameters resolved by the run plan from the validated rows (count and estimated tokens, from
status.dataReport) for the device the pods request -> the ConfigMap; attempt 1's message names the
expected optimizer steps
attempt N Job (+ headless Service for multi-node)
    failed -> attempt N+1 resumes from the newest complete checkpoint, up to runPolicy.retryLimit
    suspend -> Job suspended (pods stop, checkpoints stay), or none started; unsuspend resumes the same Job
    runPolicy.maxRuntime since the first training pod started (`status.startTime`, recorded once: time
    queued in Kueue or suspended before any pod ran does not count) -> Failed
Complete -> checkpoints and the best one recorded -> `Trained`, for the gate or for Succeeded
"""

from __future__ import annotations

from datetime import datetime

from finetune_api.hyperparameters import Resolved
from finetune_api.v1alpha1 import ConditionType, Phase, Reason
from finetune_api.v1alpha1.finetunejob import CheckpointRecord
from finetune_operator.builders.names import training_job_name
from finetune_operator.builders.workloads import CONFIG_KEY, config_map, headless_service, training_job
from finetune_operator.observed import JobObservation, JobOutcome
from finetune_operator.reconcile import status as st
from finetune_operator.reconcile.core import Step, Trained, suspend_patch

DEADLINE_EXCEEDED = "DeadlineExceeded"  # the reason of a Job stopped by its activeDeadlineSeconds


def phase(step: Step, rows: int) -> Trained | None:
    """What training produced once it is complete; None while it runs, is suspended, or after it failed."""
    job, observed, status = step.job, step.observed, step.decision.status
    lengths = status.data_report.tokens if status.data_report is not None else None
    resolved = step.plan.resolve(rows, lengths)  # for the device the training pods request
    contract = step.plan.train_contract(resolved)
    wanted = config_map(job, contract)
    if observed.config_data is None:
        step.decision.create.append(wanted)
    elif observed.config_data != wanted["data"][CONFIG_KEY]:
        step.decision.apply.append(wanted)  # the spec cannot change, but an edited ConfigMap is put back
    if job.spec.resources.nodes > 1 and not observed.service:
        step.decision.create.append(headless_service(job))

    attempts = sorted((j for j in observed.training if j.attempt is not None), key=lambda j: j.attempt or 0)
    if not attempts:
        if not step.suspended(None, f"training (job {training_job_name(job.metadata.name, 1)})"):
            _start_attempt(step, 1, planned=_planned(resolved))
        return None
    current = attempts[-1]
    status.attempts = max(status.attempts, current.attempt or 1)
    status.start_time = status.start_time or _first_pod_start(step, attempts)
    if _over_max_runtime(step, current):
        return None
    if current.outcome == JobOutcome.FAILED:
        _retry_or_fail(step, current)
    elif current.outcome == JobOutcome.COMPLETE:
        trained = st.condition(status.conditions, ConditionType.TRAINED)
        records = _complete(step)
        if records:
            best = status.best_checkpoint or records[-1]
            summary = f"{len(records)} checkpoints; best at step {best.step}"
            newly = trained is None or trained.status != "True"
            return Trained(contract, best, summary, newly=newly)
    else:
        _running(step, current)
    return None


def _planned(resolved: Resolved) -> str:
    """What attempt 1's message says of the plan: the expected optimizer steps and batch (the time follows
    in `status.progress.remaining` once the trainer has loaded the model and estimated it)."""
    if resolved.steps is None:
        return ""
    per_step = f"{resolved.batch_size} sequence{'s' if resolved.batch_size > 1 else ''}"
    if resolved.micro_batch is not None and resolved.device is not None:
        per_step += (
            f": {resolved.micro_batch} per device x {resolved.gradient_accumulation_steps} accumulation x "
            f"{resolved.device}"
        )
    return f"; {resolved.steps} optimizer steps of {per_step} expected"


def _start_attempt(step: Step, attempt: int, planned: str = "") -> None:
    job, status = step.job, step.decision.status
    deadline = step.deadline  # unknown until a pod started: then only the operator enforces maxRuntime
    remaining = None if deadline is None else int((deadline - step.now).total_seconds())
    step.decision.create.append(
        training_job(job, step.settings, attempt=attempt, active_deadline_seconds=remaining)
    )
    status.attempts = attempt
    status.phase = Phase.PENDING if job.spec.resources.queue_name else Phase.TRAINING
    name = training_job_name(job.metadata.name, attempt)
    if attempt == 1:
        message = f"attempt 1 started: job {name}{planned}"
    else:
        message = f"attempt {attempt} started: job {name} resumes from step {_latest_step(step)}"
    step.condition(ConditionType.TRAINED, "Unknown", Reason.TRAINING_RUNNING, message)
    if job.spec.resources.queue_name:
        step.condition(
            ConditionType.PODS_SCHEDULED,
            "False",
            Reason.QUEUED,
            f"waiting for Kueue to admit job {name} in queue {job.spec.resources.queue_name}",
        )
    step.event(Reason.TRAINING_RUNNING if attempt == 1 else Reason.RETRYING, message)
    step.poll()


def _first_pod_start(step: Step, attempts: list[JobObservation]) -> datetime | None:
    """When the first training pod started: the earliest pod `status.startTime` of any attempt. A Job's own
    startTime is no substitute while pods are observed (it is set when the Job controller starts it, before
    pods run, and reset on every resume); it is used only for a finished attempt whose pods are gone."""
    names = {j.name for j in attempts}
    pods = [p.start_time for p in step.observed.pods if p.job_name in names and p.start_time is not None]
    if pods:
        return min(pods)
    finished = [j.start_time for j in attempts if j.outcome is not None and j.start_time is not None]
    return min(finished, default=None)


def _latest_step(step: Step) -> int:
    return max((m.step for m in step.observed.storage.checkpoints), default=0)


def _over_max_runtime(step: Step, current: JobObservation) -> bool:
    deadline = step.deadline
    over = current.outcome == JobOutcome.FAILED and current.reason == DEADLINE_EXCEEDED
    if deadline is not None and step.now >= deadline and current.outcome is None:
        over = True
        step.decision.apply.append(suspend_patch(current.name, suspend=True))  # stop the pods now
    if over:
        limit = step.job.spec.run_policy.max_runtime
        step.fail(
            Reason.MAX_RUNTIME_EXCEEDED,
            f"runPolicy.maxRuntime {limit} reached during attempt {current.attempt}; "
            f"checkpoints up to step {_latest_step(step)} are kept",
        )
    return over


def _retry_or_fail(step: Step, current: JobObservation) -> None:
    attempt = current.attempt or 1
    limit = step.job.spec.run_policy.retry_limit
    why = current.message or current.reason or "the pod failed"
    if attempt <= limit:
        name = training_job_name(step.job.metadata.name, attempt + 1)
        if step.suspended(None, f"training from step {_latest_step(step)} (job {name})"):
            return
        step.event(Reason.RETRYING, f"attempt {attempt} failed: {why}", warning=True)
        _start_attempt(step, attempt + 1)
        return
    step.decision.status.attempts = attempt
    step.condition(ConditionType.TRAINED, "False", Reason.RETRY_LIMIT_EXCEEDED, why)
    step.fail(
        Reason.RETRY_LIMIT_EXCEEDED,
        f"attempt {attempt} failed ({why}) and runPolicy.retryLimit {limit} is spent",
    )


def _complete(step: Step) -> list[CheckpointRecord]:
    """Record the run's checkpoints and the best; empty while they cannot be read or when none exists."""
    status = step.decision.status
    records = st.checkpoint_records(step.observed.storage.checkpoints, step.plan.layout)
    if not records and step.observed.storage.error is not None:
        step.poll()  # the checkpoints are the result: do not finish without reading them
        return []
    status.checkpoints = records
    status.best_checkpoint = st.best_checkpoint(records)
    if not records:
        step.condition(ConditionType.TRAINED, "False", Reason.TRAINING_FAILED, "no complete checkpoint")
        step.fail(Reason.TRAINING_FAILED, "training exited successfully but left no complete checkpoint")
        return []
    best = status.best_checkpoint or records[-1]
    message = f"{len(records)} checkpoints; best at step {best.step}"
    last = max(step.observed.storage.checkpoints, key=lambda m: m.step)
    if last.stopped_early:
        message = f"{last.stopped_early}; {message}"
    step.condition(ConditionType.TRAINED, "True", Reason.TRAINING_COMPLETE, message)
    if status.progress is not None:
        status.progress.percent = 100
        if last.stopped_early:
            status.progress.stopped_early = last.stopped_early
            status.progress.summary = f"{last.step}/{status.progress.total_steps} (stopped early)"
    return records


def _running(step: Step, current: JobObservation) -> None:
    job, status = step.job, step.decision.status
    queued = bool(job.spec.resources.queue_name)
    what = f"training from step {_latest_step(step)} (job {current.name})"
    if step.suspended(current, what, kueue=queued):
        return
    if current.suspended and queued:
        status.phase = Phase.PENDING
        step.condition(
            ConditionType.PODS_SCHEDULED,
            "False",
            Reason.QUEUED,
            f"waiting for Kueue to admit job {current.name} in queue {job.spec.resources.queue_name}",
        )
    else:
        status.phase = Phase.TRAINING
        step.scheduling(current.name)
    if step.observed.storage.progress is not None:
        status.progress = st.progress(step.observed.storage.progress, status.start_time)
    if status.phase == Phase.TRAINING:
        step.poll()  # progress lives in S3: no watch event announces it
    else:
        step.wait()
