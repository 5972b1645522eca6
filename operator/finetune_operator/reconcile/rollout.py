"""The rollout of a ModelDeployment, decided from (spec, status, what was observed, now). Pure.

`reads(observed)` names the Prometheus queries the next decision needs; `reconcile_deployment` decides.
The stages (docs/rollouts.md has the whole story):

    Idle ──(a new version)──> Shadow ──(every check shown good)──> Canary 1..n ──> Promoting ──> Succeeded
                                 │                                      │
                                 └──(shown bad, too little evidence, ───┴──> RolledBack
                                      not ready, abort)

- The desired objects are a function of the status alone: the stable server (its version), the candidate's
  while a rollout runs, and the route with `status.weights` and `status.mirrorPercent`. A restart that
  reads the same status applies the same manifests, so server-side apply changes nothing.
- Shadow mirrors only once the candidate's servers are ready (a mirror to nothing grades nothing); its
  `maxDuration` counts from then. Promoting first sends every request to the candidate, then moves the
  stable Deployment to the candidate's version (its pods restart behind no traffic), and once they are
  ready sends everything back to stable and deletes the candidate.
- Rollback sets weight 0 and no mirror in the same decision that records it; the candidate's objects are
  deleted in that decision too (the caller applies before it deletes, so the route stops naming them first).
- Manual actions: `pause` (a level: while the annotation says so) holds every advance — the next stage, the
  next step, the start of a rollout — but not the protection: analyses keep running while paused and may
  still roll back. `resume`, `abort`, `promote` are acted on once and the annotations removed. With the
  admission policy missing, actions are ignored (they could carry any name).
"""

from __future__ import annotations

from datetime import datetime

from finetune_api.base import parse_duration
from finetune_api.serving import DEFAULT_ANALYSIS
from finetune_api.v1alpha1 import ModelDeployment
from finetune_api.v1alpha1.modeldeployment import AnalysisMetric
from finetune_api.v1alpha1.modeldeployment_status import (
    MAX_ANALYSES,
    AnalysisResult,
    DeploymentConditionType,
    DeploymentReason,
    RolloutStage,
    VersionRef,
)
from finetune_operator.builders import serving
from finetune_operator.observed_deployment import DeploymentDecision, DeploymentObserved, PrometheusReads
from finetune_operator.reconcile.rollout_actions import act_on_action, superseded
from finetune_operator.reconcile.rollout_evidence import (
    analysis_queries,
    judge_check,
    judge_metric,
    shadow_queries,
)
from finetune_operator.reconcile.rollout_step import (
    Step,
    conditions,
    desired,
    last_look,
    links,
    requeue,
)
from finetune_operator.reconcile.rollout_transitions import enter_step, promote, roll_back
from finetune_operator.settings import Settings

Stage = RolloutStage


def reads(observed: DeploymentObserved) -> PrometheusReads:
    """The queries the next decision needs: the shadow counters while grading, and at each canary analysis
    the analysis metrics too."""
    mdep = observed.deployment
    status = mdep.status
    if observed.spec_error is not None or status.candidate is None or status.stable is None:
        return PrometheusReads()
    digest = status.candidate.digest
    server = observed.servers.get("candidate")
    ready = server is not None and server.digest == digest and server.ready
    if status.stage == Stage.SHADOW and ready and status.step_started_at is not None:
        return PrometheusReads(shadow=shadow_queries(mdep, digest))
    if status.stage == Stage.CANARY and status.step is not None and _analysis_due(mdep, observed.now):
        metrics = _analysis_metrics(mdep)
        return PrometheusReads(
            shadow=shadow_queries(mdep, digest),
            analysis=analysis_queries(mdep, metrics, status.stable.digest, digest),
        )
    return PrometheusReads()


def _analysis_metrics(mdep: ModelDeployment) -> tuple[AnalysisMetric, ...]:
    metrics = mdep.spec.rollout.canary.analysis.metrics
    return DEFAULT_ANALYSIS if metrics is None else tuple(metrics)


def _analysis_due(mdep: ModelDeployment, now: datetime) -> bool:
    last = last_look(mdep.status)
    interval = parse_duration(mdep.spec.rollout.canary.analysis.interval)
    return last is None or (now - last).total_seconds() >= interval


def reconcile_deployment(observed: DeploymentObserved, settings: Settings) -> DeploymentDecision:
    step = Step(observed, settings)
    if observed.spec_error is not None:
        step.condition(
            DeploymentConditionType.READY, False, DeploymentReason.INVALID_SPEC, observed.spec_error
        )
        step.decision.requeue_after = None
        return step.decision
    status = step.status
    spec = step.mdep.spec
    if status.stable is None:
        status.stable = VersionRef(uri=spec.model.uri, digest=spec.model.digest, since=step.now)
        status.spec_model_digest = spec.model.digest
        step.tell(DeploymentReason.SERVING, f"serving {spec.model.uri} ({spec.model.digest})")
    act_on_action(step)
    if status.stage in (Stage.SHADOW, Stage.CANARY) and superseded(step):
        roll_back(
            step,
            DeploymentReason.SUPERSEDED,
            f"spec.model changed to {spec.model.digest} mid-rollout: that version goes next",
        )
    if Stage(status.stage).active:
        _advance(step)
    if not Stage(status.stage).active and not status.paused:
        _start_next(step)
    if Stage(status.stage).active:  # a new rollout started in this decision reuses the candidate's names
        kept = set(serving.server_objects(step.mdep, "candidate"))
        step.decision.delete = [d for d in step.decision.delete if d not in kept]
    desired(step)
    conditions(step)
    links(step)
    step.decision.requeue_after = requeue(step)
    return step.decision


# --- starting a rollout --------------------------------------------------------------------------


def _start_next(step: Step) -> None:
    """Pick the next version to roll out, if any, and start its rollout."""
    status, spec = step.status, step.mdep.spec
    assert status.stable is not None
    version: VersionRef | None = None
    if spec.model.digest not in (status.spec_model_digest, status.stable.digest):
        version = VersionRef(uri=spec.model.uri, digest=spec.model.digest, since=step.now)
        status.spec_model_digest = spec.model.digest
    else:
        # Only the newest promoted version is a candidate: once it has been tried (it is stable, or its
        # rollout started), every older one is superseded by it and never rolled out after it.
        tried = {h.digest for h in status.history if h.reason in _TRIED and h.digest} | {status.stable.digest}
        newest = step.observed.versions[-1] if step.observed.versions else None
        finished = newest is not None and newest.link is not None and newest.link.digest == newest.digest
        if newest is not None and newest.digest not in tried and not finished:
            version = VersionRef(uri=newest.uri, digest=newest.digest, job=newest.job, since=step.now)
    if version is None:
        return
    status.candidate = version
    status.failed_analyses = 0
    status.inconclusive_in_a_row = 0
    status.shadow = []
    source = f"FineTuneJob {version.job}" if version.job else "spec.model"
    if step.mdep.spec.rollout.shadow is not None:
        step.stage(Stage.SHADOW)
        step.tell(
            DeploymentReason.CANDIDATE_FOUND, f"rolling out {version.digest} from {source}: shadow first"
        )
    else:
        step.tell(
            DeploymentReason.CANDIDATE_FOUND,
            f"rolling out {version.digest} from {source}: canary (no shadow)",
        )
        step.stage(Stage.CANARY)  # step 1 starts once the candidate's servers are ready


_TRIED = {
    DeploymentReason.CANDIDATE_FOUND,
    DeploymentReason.CANDIDATE_NOT_READY,
    DeploymentReason.SHADOW_FAILED,
    DeploymentReason.SHADOW_INCONCLUSIVE,
    DeploymentReason.ANALYSIS_FAILED,
    DeploymentReason.ABORTED,
}


# --- advancing a rollout -------------------------------------------------------------------------


def _advance(step: Step) -> None:
    status = step.status
    assert status.candidate is not None
    if status.stage == Stage.PROMOTING:
        promote(step)
        return
    ready = step.ready("candidate", status.candidate.digest)
    if not ready and status.step_started_at is None:  # neither grading nor step 1 before it answers
        timeout = parse_duration(step.mdep.spec.rollout.candidate_ready_timeout)
        if step.elapsed(status.stage_started_at) > timeout:
            roll_back(
                step,
                DeploymentReason.CANDIDATE_NOT_READY,
                f"the candidate's servers were not ready within {timeout}s",
            )
        return
    if status.stage == Stage.CANARY and status.step is None:
        enter_step(step, 1)
    elif status.stage == Stage.SHADOW:
        _shadow(step)
    elif status.stage == Stage.CANARY:
        _canary(step)


def _shadow(step: Step) -> None:
    status, policy = step.status, step.mdep.spec.rollout.shadow
    assert policy is not None
    if status.step_started_at is None:  # the candidate just turned ready: grading starts now
        status.step_started_at = step.now
        status.mirror_percent = policy.mirror_percent
        step.tell(
            DeploymentReason.SHADOW_GRADING,
            f"candidate ready; mirroring {policy.mirror_percent}% of requests to it",
        )
        return
    if step.observed.shadow is None:  # Prometheus did not answer: wait, but not past the deadline
        if step.elapsed(status.step_started_at) > parse_duration(policy.max_duration):
            roll_back(
                step,
                DeploymentReason.SHADOW_INCONCLUSIVE,
                f"no evidence within {policy.max_duration}: {step.observed.prometheus_error}",
            )
        return
    results = [
        judge_check(check, step.observed.shadow.get(check.metric), policy.confidence, policy.min_samples)
        for check in policy.checks
    ]
    status.shadow = results
    failed = [r for r in results if r.passed is False]
    if failed:
        roll_back(
            step,
            DeploymentReason.SHADOW_FAILED,
            "shadow check failed: " + "; ".join(r.message or "" for r in failed),
        )
    elif all(r.passed for r in results):
        if status.paused:
            return
        step.tell(
            DeploymentReason.SHADOW_PASSED,
            "shadow checks passed: " + "; ".join(r.message or "" for r in results),
        )
        step.stage(Stage.CANARY)
        enter_step(step, 1)
    elif step.elapsed(status.step_started_at) > parse_duration(policy.max_duration):
        samples = min((r.samples for r in results), default=0)
        roll_back(
            step,
            DeploymentReason.SHADOW_INCONCLUSIVE,
            f"too little evidence within {policy.max_duration}: {samples} graded samples, "
            f"{policy.min_samples} needed and every check shown to meet its threshold",
        )


def _canary(step: Step) -> None:
    status = step.status
    analysis = step.mdep.spec.rollout.canary.analysis
    if step.observed.analysis is not None or step.observed.shadow is not None:
        _record_analysis(step)
        if not Stage(status.stage).active:
            return
    elif step.observed.prometheus_error is not None and _analysis_due(step.mdep, step.now):
        limit = parse_duration(analysis.interval) * analysis.inconclusive_limit
        last = status.last_analysis_at or status.step_started_at
        if step.elapsed(last) >= limit:  # Prometheus has been failing for too long: count it
            status.last_analysis_at = step.now
            _inconclusive(step, f"Prometheus unanswered: {step.observed.prometheus_error}")
            if not Stage(status.stage).active:
                return
    if status.paused:
        return
    steps = step.mdep.spec.rollout.canary.steps
    current = steps[(status.step or 1) - 1]
    if current.pause or current.duration is None:
        return  # waits for a resume or promote action
    if step.elapsed(status.step_started_at) >= parse_duration(current.duration) and _last_analysis_passed(
        step
    ):
        enter_step(step, (status.step or 0) + 1)


def _record_analysis(step: Step) -> None:
    status, observed = step.status, step.observed
    metrics = _analysis_metrics(step.mdep)
    entries: list[AnalysisResult] = []
    for metric in metrics:
        passed, message = judge_metric(metric, (observed.analysis or {}).get(metric.name))
        result = (observed.analysis or {}).get(metric.name)
        entries.append(
            AnalysisResult(
                time=step.now,
                step=status.step or 1,
                metric=metric.name,
                value=result.value if result is not None else None,
                min=metric.threshold_range.min,
                max=metric.threshold_range.max,
                passed=passed,
                message=message,
            )
        )
    policy = step.mdep.spec.rollout.shadow
    if policy is not None and observed.shadow is not None:
        for check in policy.checks:
            verdict = judge_check(
                check, observed.shadow.get(check.metric), policy.confidence, policy.min_samples
            )
            entries.append(
                AnalysisResult(
                    time=step.now,
                    step=status.step or 1,
                    metric=f"shadow/{check.metric}",
                    value=verdict.value,
                    min=check.threshold.min,
                    max=check.threshold.max,
                    passed=verdict.passed is not False,  # still counting; shown worse fails it
                    message=verdict.message,
                )
            )
    status.analyses = [*status.analyses, *entries][-MAX_ANALYSES:]
    status.last_analysis_at = step.now
    failed = [e for e in entries if e.passed is False]
    if failed:
        status.failed_analyses += 1
        status.inconclusive_in_a_row = 0
        _check_failures(step, "; ".join(e.message or e.metric for e in failed))
    elif any(e.passed is None for e in entries):
        _inconclusive(step, "; ".join(e.message or e.metric for e in entries if e.passed is None))
    else:
        status.inconclusive_in_a_row = 0


def _inconclusive(step: Step, message: str) -> None:
    status = step.status
    analysis = step.mdep.spec.rollout.canary.analysis
    status.inconclusive_in_a_row += 1
    if status.inconclusive_in_a_row >= analysis.inconclusive_limit:
        status.inconclusive_in_a_row = 0
        status.failed_analyses += 1
        _check_failures(step, f"{analysis.inconclusive_limit} inconclusive analyses in a row: {message}")


def _check_failures(step: Step, message: str) -> None:
    status = step.status
    limit = step.mdep.spec.rollout.canary.analysis.failure_limit
    if status.failed_analyses > limit:
        roll_back(
            step,
            DeploymentReason.ANALYSIS_FAILED,
            f"analysis failed at canary step {status.step} ({status.failed_analyses} failed, "
            f"limit {limit}): {message}",
        )


def _last_analysis_passed(step: Step) -> bool:
    status = step.status
    last, started = status.last_analysis_at, status.step_started_at
    if last is None or started is None or last < started:
        return False
    latest = [a for a in status.analyses if a.time == last]
    return bool(latest) and all(a.passed for a in latest)
