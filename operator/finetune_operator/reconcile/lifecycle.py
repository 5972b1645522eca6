"""The FineTuneJob lifecycle as one pure, level-based function, its phases in the order they run.

Every call starts from what exists (Jobs, pods, ConfigMap, Service, storage) and the last written status,
so running it twice, or after an operator restart, asks for nothing new: children have deterministic
names (`<name>-validate`, `<name>-train-<attempt>`), the current attempt is the highest one observed, and
creation of an existing child is a no-op in the I/O layer.

    references        (before any Job; phase kept)    -> every Secret and ServiceAccount named exists
    validate.phase    ValidatingData                  -> the validated row count
    train.phase       Pending, Training, Suspended    -> `Trained`: the contract and the judged checkpoint
                      (no EvalGate: Succeeded)
    gate.evaluate     Evaluating                      -> the passed verdict (else Rejected)
    gate.approve      AwaitingApproval                -> approved (else Rejected)
    promote.phase     Promoting                       -> the published version -> Succeeded

Each phase returns what the next needs, or None while it is not done (or after it ended the run); a new
phase is a module here and a line below. `spec.suspend` is one rule for every phase that runs a Job
(`Step.suspended`): the phase's Job is suspended, or not yet created, the phase shows Suspended naming what
resumes, and unsuspending resumes that same Job; a Job that already finished is never run again. The run
plan (`finetune_api.plan.RunPlan`) names every path and builds every trainer contract; a `PermanentError`
from any phase fails the run with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from finetune_api.errors import PermanentError
from finetune_api.plan import RunPlan
from finetune_api.v1alpha1 import ConditionType, FineTuneJob, Phase, Reason
from finetune_operator.observed import Decision, JobOutcome, Observed
from finetune_operator.reconcile import gate, promote, references, train, validate
from finetune_operator.reconcile import status as st
from finetune_operator.reconcile.core import Step
from finetune_operator.settings import Settings


def reconcile(observed: Observed, settings: Settings) -> Decision:
    """What to create, apply and record for `observed.job` now."""
    job = observed.job
    if Phase(job.status.phase).terminal:
        return Decision(status=job.status)
    status = job.status.model_copy(deep=True)
    status.observed_generation = job.metadata.generation
    plan = RunPlan.of(job)
    status.run_id = plan.run_id
    step = Step(observed, settings, plan, Decision(status=status))
    if observed.spec_error is not None:
        step.fail(Reason.INVALID_SPEC, observed.spec_error)
        return _stamped(step.decision, job.status.phase, observed.now)
    try:
        _phases(step)
    except PermanentError as err:
        step.fail(err.reason, err.message)
    return _stamped(step.decision, job.status.phase, observed.now)


def _stamped(decision: Decision, previous: Phase, now: datetime) -> Decision:
    """The decision, with the time of a phase change recorded (how long a job waits is read from it)."""
    if decision.status.phase != previous:
        decision.status.last_phase_transition_time = now
    return decision


def _phases(step: Step) -> None:
    if not references.resolved(step):
        return
    rows = validate.phase(step)
    if rows is None:
        return
    trained = train.phase(step, rows)
    if trained is None:
        return
    ref = step.job.spec.eval_gate_ref
    if ref is None:
        step.succeed(trained.summary)
        return
    if trained.newly:
        step.decision.note(trained.summary)
    result = gate.evaluate(step, trained, ref.name)
    if result is None or not gate.approve(step):
        return
    published = promote.phase(step, trained, ref.name, result)
    if published is not None:
        step.succeed(published)


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
        and observed.promotion.outcome == JobOutcome.COMPLETE
        and status.promoted is None,
    )


def invalid_spec(job: FineTuneJob, message: str, now: datetime) -> Decision:
    """The decision for an object whose spec the models refuse (the API server let it through)."""
    return reconcile(Observed(job=job, now=now, spec_error=message), Settings())
