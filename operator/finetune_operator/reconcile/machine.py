"""The FineTuneJob lifecycle as one pure, level-based function.

Every call starts from what exists (Jobs, pods, ConfigMap, Service, storage) and the last written status,
so running it twice, or after an operator restart, asks for nothing new: children have deterministic
names (`<name>-validate`, `<name>-train-<attempt>`), the current attempt is the highest one observed, and
creation of an existing child is a no-op in the I/O layer.

    ValidatingData: ConfigMap (contract without hyperparameters) + CPU-only validation Job
        -> data report passed: resolve "auto" from the row count, update the ConfigMap
    Training: attempt N Job (+ headless Service for multi-node)
        failed -> attempt N+1 resumes from the newest complete checkpoint, up to runPolicy.retryLimit
        suspend -> Job suspended (pods stop, checkpoints stay); unsuspend resumes
        runPolicy.maxRuntime since the first attempt started -> Failed
    Complete -> checkpoints and the best one recorded -> Succeeded, or with an EvalGate:
    Evaluating: evaluation Job scores the best checkpoint (and the baseline) on the gate's suites
        -> the gate decision (finetune_api.gate, failing closed) in status and the EvalGate's history
        failed, or any error -> Rejected, nothing published
    AwaitingApproval (gate.requireApproval): until an approved-by or rejected-by annotation
    Promoting: promotion Job publishes the checkpoint to <outputUri>/<runId>/, manifest last
        -> manifest read back, its digest in status -> Succeeded
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from finetune_api.base import parse_duration
from finetune_api.gate import EVAL_REPORT, decide, failing
from finetune_api.hyperparameters import resolve
from finetune_api.run_layout import DATA_REPORT, DataValidationReport
from finetune_api.trainer_config import (
    EvaluationTarget,
    PromotionTarget,
    TrainerConfig,
    build_trainer_config,
    staging_uri,
    version_uri,
)
from finetune_api.v1alpha1 import ConditionType, FineTuneJob, Phase, Reason
from finetune_api.v1alpha1.conditions import ConditionStatus
from finetune_api.v1alpha1.evalgate import MAX_HISTORY, EvalGate, EvalGateStatus, Evaluation
from finetune_api.v1alpha1.finetunejob import (
    APPROVAL_COMMENT_ANNOTATION,
    APPROVED_BY_ANNOTATION,
    REJECTED_BY_ANNOTATION,
    Approval,
    CheckpointRecord,
    GateResult,
    PromotedArtifact,
)
from finetune_operator.builders.names import (
    evaluation_job_name,
    promotion_job_name,
    run_id,
    training_job_name,
    validation_job_name,
)
from finetune_operator.builders.workloads import (
    CONFIG_KEY,
    config_map,
    evaluation_job,
    headless_service,
    promotion_job,
    training_job,
    validation_job,
)
from finetune_operator.observed import Decision, Event, JobObservation, Observed
from finetune_operator.reconcile import status as st
from finetune_operator.settings import Settings

IMAGE_PULL_REASONS = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"})
CONFIG_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError"})


@dataclass
class _Run:
    """One reconcile call: the observation, the decision being built, and small helpers."""

    observed: Observed
    settings: Settings
    decision: Decision
    data_message: str = ""  # told together with the next phase's event: one event per transition
    contract: TrainerConfig | None = None  # the training contract, which evaluation and promotion extend

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
        self.decision.events.append(Event("Warning" if warning else "Normal", reason, message))

    def fail(self, reason: Reason, message: str) -> None:
        s = self.decision.status
        s.phase = Phase.FAILED
        s.completion_time = s.completion_time or self.now
        self.condition(ConditionType.FAILED, "True", reason, message)
        self.condition(ConditionType.SUCCEEDED, "False", reason, message)
        self.event(reason, message, warning=True)
        self.decision.requeue_after = None

    def wait(self) -> None:
        """Nothing to read until a child changes (its watch event wakes the loop): only a resync, or
        the max-runtime deadline if that comes sooner."""
        self._requeue(self.settings.resync_seconds)

    def poll(self) -> None:
        """Something only S3 can tell (progress, a report that could not be read): look again soon."""
        self._requeue(self.settings.reconcile_interval_seconds)

    def _requeue(self, seconds: float) -> None:
        deadline = _deadline(self)
        if deadline is not None:
            seconds = min(seconds, max(1.0, (deadline - self.now).total_seconds()))
        self.decision.requeue_after = seconds


def reconcile(observed: Observed, settings: Settings) -> Decision:
    """What to create, apply and record for `observed.job` now."""
    job = observed.job
    if Phase(job.status.phase).terminal:
        return Decision(status=job.status)
    status = job.status.model_copy(deep=True)
    status.observed_generation = job.metadata.generation
    status.run_id = status.run_id or run_id(job)
    run = _Run(observed, settings, Decision(status=status))
    if observed.spec_error is not None:
        run.fail(Reason.INVALID_SPEC, observed.spec_error)
        return run.decision
    report = _validate(run)
    if report is not None:
        _train(run, report)
    return run.decision


# --- ValidatingData -------------------------------------------------------------------------------


def _validate(run: _Run) -> DataValidationReport | None:
    """The passing data report, or None while validation runs or after it failed."""
    observed, status = run.observed, run.decision.status
    passed = st.condition(status.conditions, ConditionType.DATA_VALIDATED)
    if passed is not None and passed.status == "True" and status.data_report is not None:
        return DataValidationReport(passed=True, rows=status.data_report.rows)
    validation = observed.validation
    uri = staging_uri(run.job, status.run_id or "") + DATA_REPORT
    if validation is None:
        contract = build_trainer_config(run.job, run_id=status.run_id or "", resolved=None)
        run.decision.create.append(validation_job(run.job, run.settings, contract))
        status.phase = Phase.VALIDATING_DATA
        message = (
            f"job {validation_job_name(run.job.metadata.name)} checks the data before any GPU is requested"
        )
        run.condition(ConditionType.DATA_VALIDATED, "Unknown", Reason.VALIDATION_RUNNING, message)
        run.event(Reason.VALIDATION_RUNNING, message)
        run.wait()
        return None
    if validation.outcome is None:
        status.phase = Phase.VALIDATING_DATA
        _scheduling(run, validation.name)
        run.wait()
        return None
    report = observed.storage.data_report
    if report is None:
        if observed.storage.error is not None:
            run.condition(
                ConditionType.DATA_VALIDATED,
                "Unknown",
                Reason.VALIDATION_RUNNING,
                f"validation finished; reading {uri} failed: {observed.storage.error}",
            )
            run.poll()
            return None
        outcome = "succeeded" if validation.outcome == "Complete" else "failed"
        run.condition(ConditionType.DATA_VALIDATED, "False", Reason.DATA_UNREADABLE, "no data report")
        run.fail(
            Reason.DATA_UNREADABLE,
            f"validation {outcome} without writing {uri} ({validation.message or 'no message'}); "
            f"see kubectl logs job/{validation.name}",
        )
        return None
    status.data_report = st.data_report(report, uri)
    if not report.passed or validation.outcome == "Failed":
        rules = report.failed_rules or report.problems or [validation.message or "validation failed"]
        message = "data gates failed: " + "; ".join(rules[:5])
        if len(rules) > 5:
            message += f"; and {len(rules) - 5} more in {uri}"
        run.condition(ConditionType.DATA_VALIDATED, "False", Reason.DATA_GATES_FAILED, message)
        run.fail(Reason.DATA_GATES_FAILED, message)
        return None
    rows = report.rows.get("training", 0)
    message = (
        f"{rows} training rows; duplicate rate {report.duplicate_rate:.1%}, leakage {report.leakage_rate:.1%}"
    )
    run.condition(ConditionType.DATA_VALIDATED, "True", Reason.DATA_GATES_PASSED, message)
    run.decision.status.data_report = st.data_report(report, uri)
    run.data_message = f"data gates passed ({message})"
    return report


# --- Training -------------------------------------------------------------------------------------


def _train(run: _Run, report: DataValidationReport) -> None:
    job, observed, status = run.job, run.observed, run.decision.status
    try:
        resolved = resolve(
            job.spec.hyperparameters,
            rows=report.rows.get("training", 0),
            method=job.spec.method,
            adapter=job.spec.adapter.type,
        )
    except ValueError as err:
        run.fail(Reason.DATA_UNREADABLE, f"cannot train: {err}")
        return
    contract = build_trainer_config(job, run_id=status.run_id or "", resolved=resolved)
    run.contract = contract
    wanted = config_map(job, contract)
    if observed.config_data is None:
        run.decision.create.append(wanted)
    elif observed.config_data != wanted["data"][CONFIG_KEY]:
        run.decision.apply.append(wanted)  # the spec cannot change, but an edited ConfigMap is put back
    if job.spec.resources.nodes > 1 and not observed.service:
        run.decision.create.append(headless_service(job))

    attempts = sorted((j for j in observed.training if j.attempt is not None), key=lambda j: j.attempt or 0)
    if not attempts:
        if job.spec.suspend:
            _suspended(run, step=0)
            return
        status.start_time = status.start_time or run.now
        _start_attempt(run, 1)
        return
    current = attempts[-1]
    status.attempts = max(status.attempts, current.attempt or 1)
    status.start_time = status.start_time or current.start_time or run.now
    if _over_max_runtime(run, current):
        return
    if current.outcome == "Failed":
        _retry_or_fail(run, current)
    elif current.outcome == "Complete":
        _complete(run)
    else:
        _running(run, current)


def _deadline(run: _Run) -> datetime | None:
    limit = run.job.spec.run_policy.max_runtime
    start = run.decision.status.start_time
    if limit is None or start is None:
        return None
    return start + timedelta(seconds=parse_duration(limit))


def _start_attempt(run: _Run, attempt: int) -> None:
    job, status = run.job, run.decision.status
    deadline = _deadline(run)
    remaining = None if deadline is None else int((deadline - run.now).total_seconds())
    run.decision.create.append(
        training_job(job, run.settings, attempt=attempt, active_deadline_seconds=remaining)
    )
    status.attempts = attempt
    status.phase = Phase.PENDING if job.spec.resources.queue_name else Phase.TRAINING
    name = training_job_name(job.metadata.name, attempt)
    if attempt == 1:
        message = f"attempt 1 started: job {name}"
    else:
        message = f"attempt {attempt} started: job {name} resumes from step {_latest_step(run)}"
    run.condition(ConditionType.TRAINED, "Unknown", Reason.TRAINING_RUNNING, message)
    if job.spec.resources.queue_name:
        run.condition(
            ConditionType.PODS_SCHEDULED,
            "False",
            Reason.QUEUED,
            f"waiting for Kueue to admit job {name} in queue {job.spec.resources.queue_name}",
        )
    told = f"{run.data_message}; {message}" if run.data_message else message
    run.event(Reason.TRAINING_RUNNING if attempt == 1 else Reason.RETRYING, told)
    run.poll()


def _latest_step(run: _Run) -> int:
    return max((m.step for m in run.observed.storage.checkpoints), default=0)


def _over_max_runtime(run: _Run, current: JobObservation) -> bool:
    deadline = _deadline(run)
    over = current.outcome == "Failed" and current.reason == "DeadlineExceeded"
    if deadline is not None and run.now >= deadline and current.outcome is None:
        over = True
        run.decision.apply.append(_suspend_patch(current.name, suspend=True))  # stop the pods now
    if over:
        limit = run.job.spec.run_policy.max_runtime
        run.fail(
            Reason.MAX_RUNTIME_EXCEEDED,
            f"runPolicy.maxRuntime {limit} reached during attempt {current.attempt}; "
            f"checkpoints up to step {_latest_step(run)} are kept",
        )
    return over


def _retry_or_fail(run: _Run, current: JobObservation) -> None:
    attempt = current.attempt or 1
    limit = run.job.spec.run_policy.retry_limit
    why = current.message or current.reason or "the pod failed"
    if attempt <= limit:
        run.event(Reason.RETRYING, f"attempt {attempt} failed: {why}", warning=True)
        _start_attempt(run, attempt + 1)
        return
    run.decision.status.attempts = attempt
    run.condition(ConditionType.TRAINED, "False", Reason.RETRY_LIMIT_EXCEEDED, why)
    run.fail(
        Reason.RETRY_LIMIT_EXCEEDED,
        f"attempt {attempt} failed ({why}) and runPolicy.retryLimit {limit} is spent",
    )


def _complete(run: _Run) -> None:
    job, status = run.job, run.decision.status
    records = st.checkpoint_records(run.observed.storage.checkpoints, staging_uri(job, status.run_id or ""))
    if not records and run.observed.storage.error is not None:
        run.poll()  # the checkpoints are the result: do not finish without reading them
        return
    status.checkpoints = records
    status.best_checkpoint = st.best_checkpoint(records)
    if not records:
        run.condition(ConditionType.TRAINED, "False", Reason.TRAINING_FAILED, "no complete checkpoint")
        run.fail(Reason.TRAINING_FAILED, "training exited successfully but left no complete checkpoint")
        return
    best = status.best_checkpoint or records[-1]
    message = f"{len(records)} checkpoints; best at step {best.step}"
    trained = st.condition(status.conditions, ConditionType.TRAINED)
    newly_trained = trained is None or trained.status != "True"
    run.condition(ConditionType.TRAINED, "True", Reason.TRAINING_COMPLETE, message)
    if status.progress is not None:
        status.progress.percent = 100
    if job.spec.eval_gate_ref is not None:
        if newly_trained:
            run.data_message = message
        _gate(run, best)
        return
    _succeed(run, message)


def _succeed(run: _Run, message: str) -> None:
    status = run.decision.status
    status.phase = Phase.SUCCEEDED
    status.completion_time = run.now
    run.condition(ConditionType.SUCCEEDED, "True", Reason.COMPLETED, message)
    run.event(Reason.COMPLETED, _told(run, message))
    run.decision.requeue_after = None


def _told(run: _Run, message: str) -> str:
    """`message`, after whatever the previous transition of this same step had to say."""
    told = f"{run.data_message}; {message}" if run.data_message else message
    run.data_message = ""
    return told


def _reject(run: _Run, reason: Reason, message: str) -> None:
    status = run.decision.status
    status.phase = Phase.REJECTED
    status.completion_time = status.completion_time or run.now
    run.condition(ConditionType.SUCCEEDED, "False", reason, message)
    run.event(reason, _told(run, message), warning=True)
    run.decision.requeue_after = None


# --- Evaluating, AwaitingApproval, Promoting --------------------------------------------------------


def _gate(run: _Run, best: CheckpointRecord) -> None:
    status = run.decision.status
    if status.gate is None:
        _evaluate(run, best)
        if status.gate is None or status.gate.verdict != "Passed":
            return
    if _approved(run):
        _promote(run, best)


def _evaluate(run: _Run, best: CheckpointRecord) -> None:
    job, observed, status = run.job, run.observed, run.decision.status
    ref = job.spec.eval_gate_ref
    gate_name = ref.name if ref else ""
    status.phase = Phase.EVALUATING
    evaluation, gate = observed.evaluation, observed.gate
    if evaluation is None:
        _start_evaluation(run, best, gate_name)
        return
    if evaluation.outcome is None:
        _scheduling(run, evaluation.name)
        run.wait()
        return
    storage = observed.storage
    uri = staging_uri(job, status.run_id or "") + EVAL_REPORT
    if storage.eval_report is None and storage.eval_problem is None and storage.error is not None:
        message = f"evaluation finished; reading {uri} failed: {storage.error}"
        run.condition(ConditionType.EVALUATED, "Unknown", Reason.EVALUATION_RUNNING, message)
        run.poll()
        return
    problem = storage.eval_problem
    if problem is None and evaluation.outcome == "Failed":
        problem = f"job {evaluation.name} failed: {evaluation.message or evaluation.reason or 'no message'}"
    elif problem is None and storage.eval_report is None:
        problem = f"job {evaluation.name} finished without writing {uri}"
    if gate is None:
        result = GateResult(verdict="Error", evaluated_at=run.now)
        lines = [observed.gate_problem or f"EvalGate {gate_name} no longer exists"]
    else:
        report = storage.eval_report if problem is None else None
        result = decide(gate.spec, report, problem=problem, at=run.now)
        lines = failing(result)
        run.decision.gate_status = _history(run, gate, result, best)
        run.decision.gate_resource_version = gate.metadata.resource_version
    if storage.eval_report is not None:
        result.report_uri = uri
    status.gate = result
    if result.verdict != "Passed":
        shown = "; ".join(lines[:5]) + (f"; and {len(lines) - 5} more" if len(lines) > 5 else "")
        failed = result.verdict == "Failed"
        reason = Reason.GATE_FAILED if failed else Reason.EVALUATION_FAILED
        run.condition(ConditionType.EVALUATED, "True" if failed else "False", reason, shown)
        run.condition(ConditionType.GATE_PASSED, "False", reason, shown)
        _reject(run, reason, f"EvalGate {gate_name} {'failed' if failed else 'could not evaluate'}: {shown}")
        return
    message = f"EvalGate {gate_name} passed ({len(result.metrics)} checks)"
    run.condition(ConditionType.EVALUATED, "True", Reason.GATE_PASSED, message)
    run.condition(ConditionType.GATE_PASSED, "True", Reason.GATE_PASSED, message)
    run.data_message = message


def _start_evaluation(run: _Run, best: CheckpointRecord, gate_name: str) -> None:
    job, observed, status, gate = run.job, run.observed, run.decision.status, run.observed.gate
    if gate is None:
        message = observed.gate_problem or f"EvalGate {gate_name} not found"
        previous = st.condition(status.conditions, ConditionType.EVALUATED)
        if previous is None or previous.reason != Reason.EVAL_GATE_NOT_FOUND:
            run.event(Reason.EVAL_GATE_NOT_FOUND, _told(run, f"{message}; waiting for it"), warning=True)
        run.condition(ConditionType.EVALUATED, "Unknown", Reason.EVAL_GATE_NOT_FOUND, message)
        run.poll()  # EvalGates are not watched: look again
        return
    target = EvaluationTarget(
        gate_name=gate_name,
        gate=gate.spec,
        checkpoint_uri=best.uri,
        checkpoint_step=best.step,
        baseline=gate.spec.baseline.model or job.spec.base_model,
    )
    contract = _contract(run).model_copy(update={"evaluation": target})
    run.decision.create.append(evaluation_job(job, run.settings, contract, image=job.spec.image))
    name = evaluation_job_name(job.metadata.name)
    suites = len(gate.spec.suites)
    message = f"job {name} evaluates step {best.step} on {suites} suites of EvalGate {gate_name}"
    run.condition(ConditionType.EVALUATED, "Unknown", Reason.EVALUATION_RUNNING, message)
    run.event(Reason.EVALUATION_RUNNING, _told(run, message))
    run.wait()


def _history(run: _Run, gate: EvalGate, result: GateResult, best: CheckpointRecord) -> EvalGateStatus:
    """The gate's status with this evaluation appended (replacing an entry for the same job and
    checkpoint, so a step that is retried does not count twice)."""
    name = run.job.metadata.name
    entry = Evaluation(
        job=name,
        checkpoint=best.uri,
        verdict=result.verdict,
        time=run.now,
        metrics={  # the candidate's value per suite (the no-regression checks repeat it)
            f"{m.suite}/{m.metric}": m.value
            for m in result.metrics
            if m.value is not None and m.comparator != "no_regression"
        },
        report_uri=result.report_uri,
    )
    kept = [e for e in gate.status.history if (e.job, e.checkpoint) != (name, best.uri)]
    return gate.status.model_copy(
        update={"history": [*kept, entry][-MAX_HISTORY:], "last_verdict": result.verdict}
    )


def _approved(run: _Run) -> bool:
    """True once promotion may go ahead: no approval needed, or a reviewer approved."""
    job, status, gate = run.job, run.decision.status, run.observed.gate
    if status.approval is not None:
        return status.approval.decision == "Approved"
    if gate is not None and not gate.spec.require_approval:
        return True  # (a gate that disappeared after passing still needs a reviewer: failing closed)
    annotations = job.metadata.annotations
    rejected, approved = annotations.get(REJECTED_BY_ANNOTATION), annotations.get(APPROVED_BY_ANNOTATION)
    comment = annotations.get(APPROVAL_COMMENT_ANNOTATION)
    if rejected:
        status.approval = Approval(decision="Rejected", by=rejected[:256], at=run.now, comment=comment)
        message = f"rejected by {rejected}" + (f": {comment}" if comment else "")
        run.condition(ConditionType.APPROVED, "False", Reason.REJECTED_BY_REVIEWER, message)
        _reject(run, Reason.REJECTED_BY_REVIEWER, message)
        return False
    if approved:
        status.approval = Approval(decision="Approved", by=approved[:256], at=run.now, comment=comment)
        message = f"approved by {approved}" + (f": {comment}" if comment else "")
        run.condition(ConditionType.APPROVED, "True", Reason.APPROVED, message)
        run.data_message = _told(run, message)
        return True
    if status.phase != Phase.AWAITING_APPROVAL:
        message = (
            f"the gate passed and requires approval: annotate with {APPROVED_BY_ANNOTATION}=<name> to "
            f"promote or {REJECTED_BY_ANNOTATION}=<name> to reject"
        )
        run.condition(ConditionType.APPROVED, "Unknown", Reason.APPROVAL_PENDING, message)
        run.event(Reason.APPROVAL_PENDING, _told(run, message))
    status.phase = Phase.AWAITING_APPROVAL
    run.wait()  # the annotation is a change of the object itself, which wakes the loop
    return False


def _promote(run: _Run, best: CheckpointRecord) -> None:
    job, observed, status = run.job, run.observed, run.decision.status
    status.phase = Phase.PROMOTING
    version = version_uri(job, status.run_id or "")
    promotion = observed.promotion
    if promotion is None:
        ref = job.spec.eval_gate_ref
        if status.gate is None or ref is None:
            raise ValueError("promotion needs a passed gate")
        target = PromotionTarget(
            checkpoint_uri=best.uri,
            checkpoint_step=best.step,
            version_uri=version,
            gate_name=ref.name,
            gate=status.gate,
            approval=status.approval,
        )
        contract = _contract(run).model_copy(update={"promotion": target})
        run.decision.create.append(promotion_job(job, run.settings, contract))
        message = f"job {promotion_job_name(job.metadata.name)} publishes step {best.step} to {version}"
        run.condition(ConditionType.PROMOTED, "Unknown", Reason.PROMOTION_RUNNING, message)
        run.event(Reason.PROMOTION_RUNNING, _told(run, message))
        run.wait()
        return
    if promotion.outcome is None:
        _scheduling(run, promotion.name)
        run.wait()
        return
    if promotion.outcome == "Failed":
        message = (
            f"job {promotion.name} failed: {promotion.message or promotion.reason or 'no message'}; "
            f"no manifest was written, so nothing under {version} is published"
        )
        run.condition(ConditionType.PROMOTED, "False", Reason.PROMOTION_FAILED, message)
        run.fail(Reason.PROMOTION_FAILED, message)
        return
    digest = observed.storage.promoted_digest
    if digest is None:
        if observed.storage.error is not None:
            run.poll()
            return
        message = f"job {promotion.name} finished but {version} has no manifest"
        run.condition(ConditionType.PROMOTED, "False", Reason.PROMOTION_FAILED, message)
        run.fail(Reason.PROMOTION_FAILED, message)
        return
    status.promoted = PromotedArtifact(uri=version, digest=digest, promoted_at=run.now)
    message = f"published step {best.step} to {version} ({digest})"
    run.condition(ConditionType.PROMOTED, "True", Reason.PROMOTED, message)
    _succeed(run, message)


def _contract(run: _Run) -> TrainerConfig:
    if run.contract is None:
        raise ValueError("evaluation and promotion extend the training contract, which is built first")
    return run.contract


def _running(run: _Run, current: JobObservation) -> None:
    job, status = run.job, run.decision.status
    queued = bool(job.spec.resources.queue_name)
    if job.spec.suspend:
        if not current.suspended:
            run.decision.apply.append(_suspend_patch(current.name, suspend=True))
        _suspended(run, step=_latest_step(run))
        return
    was_suspended = status.phase == Phase.SUSPENDED
    if current.suspended and not queued:
        run.decision.apply.append(_suspend_patch(current.name, suspend=False))
    if was_suspended:
        message = f"resumed: job {current.name} continues from step {_latest_step(run)}"
        run.condition(ConditionType.SUSPENDED, "False", Reason.RESUMED, message)
        run.event(Reason.RESUMED, message)
    if current.suspended and queued:
        status.phase = Phase.PENDING
        run.condition(
            ConditionType.PODS_SCHEDULED,
            "False",
            Reason.QUEUED,
            f"waiting for Kueue to admit job {current.name} in queue {job.spec.resources.queue_name}",
        )
    else:
        status.phase = Phase.TRAINING
        _scheduling(run, current.name)
    if run.observed.storage.progress is not None:
        status.progress = st.progress(run.observed.storage.progress, status.start_time)
    if status.phase == Phase.TRAINING:
        run.poll()  # progress lives in S3: no watch event announces it
    else:
        run.wait()


def _suspended(run: _Run, *, step: int) -> None:
    status = run.decision.status
    if status.phase != Phase.SUSPENDED:
        message = f"suspended: pods stopped, checkpoints kept; unsuspend to resume from step {step}"
        run.condition(ConditionType.SUSPENDED, "True", Reason.SUSPENDED_BY_USER, message)
        run.event(Reason.SUSPENDED_BY_USER, message)
    status.phase = Phase.SUSPENDED
    run.wait()


def _suspend_patch(name: str, *, suspend: bool) -> dict[str, object]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": {"suspend": suspend}}


def _scheduling(run: _Run, job_name: str) -> None:
    """Surface why the pods of `job_name` are not running, from the pods themselves."""
    pods = [p for p in run.observed.pods if p.job_name == job_name]
    for pod in pods:
        if pod.waiting_reason in IMAGE_PULL_REASONS:
            reason, detail = Reason.IMAGE_PULL_BACK_OFF, f"{pod.waiting_reason}: {pod.waiting_message}"
        elif pod.waiting_reason in CONFIG_REASONS:
            reason, detail = Reason.INVALID_SPEC, f"{pod.waiting_reason}: {pod.waiting_message}"
        elif pod.phase == "Pending" and pod.unschedulable_message:
            reason, detail = Reason.UNSCHEDULABLE, pod.unschedulable_message
        else:
            continue
        run.condition(ConditionType.PODS_SCHEDULED, "False", reason, f"pod {pod.name}: {detail}")
        return
    if any(p.phase in ("Running", "Succeeded") for p in pods):
        run.condition(ConditionType.PODS_SCHEDULED, "True", Reason.SCHEDULED, f"pods of job {job_name} run")


# --- helpers for the handlers ---------------------------------------------------------------------


@dataclass(frozen=True)
class Reads:
    """Which run objects reconcile needs from storage, given what the cluster shows."""

    report: bool
    progress: bool
    checkpoints: bool
    eval_report: bool = False
    manifest: bool = False

    def __bool__(self) -> bool:
        return self.report or self.progress or self.checkpoints or self.eval_report or self.manifest


def storage_reads(observed: Observed) -> Reads:
    status = observed.job.status
    if Phase(status.phase).terminal:
        return Reads(False, False, False)
    validated = st.condition(status.conditions, ConditionType.DATA_VALIDATED)
    finished = observed.validation is not None and observed.validation.outcome is not None
    training = bool(observed.training)
    return Reads(
        report=finished and (validated is None or validated.status != "True"),
        progress=training and any(j.outcome is None for j in observed.training),
        checkpoints=training,
        eval_report=observed.evaluation is not None
        and observed.evaluation.outcome is not None
        and status.gate is None,
        manifest=observed.promotion is not None
        and observed.promotion.outcome == "Complete"
        and status.promoted is None,
    )


def invalid_spec(job: FineTuneJob, message: str, now: datetime) -> Decision:
    """The decision for an object whose spec the models refuse (the API server let it through)."""
    return reconcile(Observed(job=job, now=now, spec_error=message), Settings())
