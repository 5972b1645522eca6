"""The working state of one rollout decision (`Step`) and what follows from the status alone: the desired
objects, the conditions, the summary, the FineTuneJobs' links and when to look again. Pure; used by
`reconcile.rollout`, which owns the stage transitions."""

from __future__ import annotations

from datetime import datetime, timedelta

from finetune_api.base import parse_duration
from finetune_api.serving import Variant
from finetune_api.v1alpha1 import ModelDeployment
from finetune_api.v1alpha1.finetunejob_status import RolloutLink
from finetune_api.v1alpha1.modeldeployment import ServedModel
from finetune_api.v1alpha1.modeldeployment_status import (
    MAX_HISTORY,
    DeploymentConditionType,
    DeploymentReason,
    HistoryEntry,
    ModelDeploymentStatus,
    RolloutStage,
    VersionRef,
)
from finetune_operator.builders import serving
from finetune_operator.observed import Event
from finetune_operator.observed_deployment import DeploymentDecision, DeploymentObserved
from finetune_operator.reconcile import status as st
from finetune_operator.settings import Settings

IDLE_LOOK_SECONDS = 60.0  # a version promoted without an event reaching us is still noticed
WAIT_SECONDS = 2.0  # while servers start or the route changes
SHADOW_LOOK_SECONDS = 5.0
Stage = RolloutStage


def short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


def served(version: VersionRef) -> ServedModel:
    return ServedModel(uri=version.uri, digest=version.digest)


class Step:
    """One decision in the making: the observation, the status being written and the decision."""

    def __init__(self, observed: DeploymentObserved, settings: Settings) -> None:
        self.observed = observed
        self.settings = settings
        self.mdep: ModelDeployment = observed.deployment
        self.now: datetime = observed.now
        self.status = self.mdep.status.model_copy(deep=True)
        self.decision = DeploymentDecision(status=self.status)

    # --- recording -------------------------------------------------------------------------------

    def tell(
        self, reason: DeploymentReason, message: str, *, warning: bool = False, by: str | None = None
    ) -> None:
        digest = self.status.candidate.digest if self.status.candidate else None
        self.decision.events.append(Event("Warning" if warning else "Normal", reason, message))
        entry = HistoryEntry(time=self.now, reason=reason, message=message[:4000], digest=digest, by=by)
        self.status.history = [*self.status.history, entry][-MAX_HISTORY:]

    def condition(
        self, type_: DeploymentConditionType, value: bool, reason: DeploymentReason, message: str
    ) -> None:
        self.status.conditions = st.set_condition(
            self.status.conditions,
            type_,
            "True" if value else "False",
            reason,
            message,
            now=self.now,
            generation=self.mdep.metadata.generation,
        )

    def stage(self, stage: Stage) -> None:
        self.status.stage = stage
        self.status.stage_started_at = self.now
        self.status.step = None
        self.status.step_started_at = None

    def elapsed(self, since: datetime | None) -> float:
        return (self.now - since).total_seconds() if since is not None else 0.0

    # --- observations ----------------------------------------------------------------------------

    def ready(self, variant: Variant, digest: str) -> bool:
        server = self.observed.servers.get(variant)
        return server is not None and server.digest == digest and server.ready


def last_look(status: ModelDeploymentStatus) -> datetime | None:
    """When the current step started or was last analysed, whichever is later."""
    times = [t for t in (status.step_started_at, status.last_analysis_at) if t is not None]
    return max(times) if times else None


# --- what the status asks for --------------------------------------------------------------------


def desired(step: Step) -> None:
    status, mdep, settings = step.status, step.mdep, step.settings
    assert status.stable is not None
    stable_version = status.stable
    promoting_switched = status.stage == Stage.PROMOTING and status.step == 1
    if promoting_switched and status.candidate is not None:
        stable_version = status.candidate
    apply = step.decision.apply
    apply.extend(serving.server(mdep, "stable", served(stable_version), settings))
    active = Stage(status.stage).active and status.candidate is not None
    if active:
        assert status.candidate is not None
        apply.extend(serving.server(mdep, "candidate", served(status.candidate), settings))
    apply.append(
        serving.http_route(
            mdep,
            status.weights.candidate if active else 0,
            status.mirror_percent if active else 0,
            candidate=active,
        )
    )


def conditions(step: Step) -> None:
    status, observed = step.status, step.observed
    assert status.stable is not None
    route = observed.route
    stable_ready = any(
        step.ready("stable", digest)
        for digest in {status.stable.digest, status.candidate.digest if status.candidate else ""}
    )
    if not stable_ready:
        step.condition(
            DeploymentConditionType.READY,
            False,
            DeploymentReason.STABLE_NOT_READY,
            "the stable servers are not ready",
        )
    elif route is None or not route.accepted:
        message = (
            route.message if route is not None and route.message else "no Gateway has accepted the route yet"
        )
        step.condition(DeploymentConditionType.READY, False, DeploymentReason.ROUTE_NOT_ACCEPTED, message)
    else:
        step.condition(
            DeploymentConditionType.READY, True, DeploymentReason.SERVING, f"serving {status.stable.digest}"
        )
    active = Stage(status.stage).active
    if active:
        step.condition(DeploymentConditionType.PROGRESSING, True, _progress_reason(status), summary(step))
    else:
        done = DeploymentReason.PROMOTED if status.stage == Stage.SUCCEEDED else DeploymentReason.SERVING
        rolled_back = st.condition(status.conditions, DeploymentConditionType.ROLLED_BACK)
        if status.stage == Stage.ROLLED_BACK and rolled_back is not None:
            done = DeploymentReason(rolled_back.reason)
        step.condition(DeploymentConditionType.PROGRESSING, False, done, summary(step))
    if observed.action_problem is None or observed.action is None:
        step.condition(
            DeploymentConditionType.PAUSED,
            status.paused,
            DeploymentReason.PAUSED if status.paused else DeploymentReason.RESUMED,
            "a pause action holds the rollout" if status.paused else "not paused",
        )
    status.summary = summary(step)
    status.observed_generation = step.mdep.metadata.generation


def _progress_reason(status: ModelDeploymentStatus) -> DeploymentReason:
    if status.stage == Stage.SHADOW:
        return (
            DeploymentReason.SHADOW_GRADING if status.step_started_at else DeploymentReason.CANDIDATE_STARTING
        )
    if status.stage == Stage.CANARY:
        return DeploymentReason.CANARY_STEP
    return DeploymentReason.PROMOTING


def summary(step: Step) -> str:
    status = step.status
    if status.stage == Stage.SHADOW:
        if status.step_started_at is None:
            return "Shadow: candidate starting"
        policy = step.mdep.spec.rollout.shadow
        samples = min((r.samples for r in status.shadow), default=0)
        return f"Shadow: {samples}/{policy.min_samples if policy else 0} graded"
    if status.stage == Stage.CANARY:
        if status.step is None:
            return "Canary: candidate starting"
        return f"Canary step {status.step} of {status.steps} ({status.weights.candidate}%)" + (
            ", paused" if status.paused else ""
        )
    if status.stage == Stage.PROMOTING:
        return "Promoting"
    stable = status.stable.digest if status.stable else ""
    prefix = {Stage.SUCCEEDED: "Promoted", Stage.ROLLED_BACK: "Rolled back"}.get(
        Stage(status.stage), "Serving"
    )
    if status.stage == Stage.ROLLED_BACK and status.candidate is not None:
        return f"Rolled back {short(status.candidate.digest)}; serving {short(stable)}"
    return f"{prefix}: serving {short(stable)}"


def links(step: Step) -> None:
    """The rollout stage of the versions' FineTuneJobs, written when it changes."""
    status = step.status
    for version in step.observed.versions:
        if status.candidate is not None and version.digest == status.candidate.digest:
            stage = str(status.stage)
        elif status.stable is not None and version.digest == status.stable.digest:
            stage = str(Stage.SUCCEEDED) if status.stable.job == version.job else "Serving"
        else:
            continue
        link = version.link
        if (
            link is not None
            and link.deployment == step.mdep.metadata.name
            and link.digest == version.digest
            and link.stage == stage
        ):
            continue
        step.decision.job_links[version.job] = RolloutLink(
            deployment=step.mdep.metadata.name, digest=version.digest, stage=stage, updated_at=step.now
        )


def requeue(step: Step) -> float:
    status = step.status
    if status.stage == Stage.SHADOW:
        return WAIT_SECONDS if status.step_started_at is None else SHADOW_LOOK_SECONDS
    if status.stage == Stage.PROMOTING:
        return WAIT_SECONDS
    if status.stage == Stage.CANARY:
        analysis = step.mdep.spec.rollout.canary.analysis
        interval = parse_duration(analysis.interval)
        last = last_look(status) or step.now
        due = last + timedelta(seconds=interval)
        return max(0.5, min(float(interval), (due - step.now).total_seconds() + 0.05))
    ready = step.ready("stable", status.stable.digest if status.stable else "")
    return IDLE_LOOK_SECONDS if ready else WAIT_SECONDS
