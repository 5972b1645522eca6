"""The moves every rollout path shares: into a canary step, into Promoting and through it, and back to the
stable version. Pure; `reconcile.rollout` and `rollout_actions` decide when."""

from __future__ import annotations

from finetune_api.v1alpha1.modeldeployment_status import (
    DeploymentConditionType,
    DeploymentReason,
    RolloutStage,
    Weights,
)
from finetune_operator.builders import serving
from finetune_operator.reconcile.rollout_step import WAIT_SECONDS, Step

Stage = RolloutStage


def enter_step(step: Step, number: int) -> None:
    """Canary step `number` (1-based), or Promoting after the last."""
    status = step.status
    steps = step.mdep.spec.rollout.canary.steps
    if number > len(steps):
        enter_promoting(step)
        return
    status.step, status.steps, status.step_started_at = number, len(steps), step.now
    wanted = steps[number - 1]
    if wanted.weight is not None:
        status.weights = Weights(stable=100 - wanted.weight, candidate=wanted.weight)
    shadow = step.mdep.spec.rollout.shadow
    status.mirror_percent = shadow.mirror_percent if shadow is not None else 0
    what = "pause until resumed" if wanted.pause else f"weight {wanted.weight}% for {wanted.duration}"
    step.tell(DeploymentReason.CANARY_STEP, f"canary step {number} of {len(steps)}: {what}")


def enter_promoting(step: Step) -> None:
    status = step.status
    step.stage(Stage.PROMOTING)
    status.weights = Weights(stable=0, candidate=100)
    status.mirror_percent = 0
    step.tell(
        DeploymentReason.PROMOTING,
        "promoting: the candidate serves every request while stable takes its version",
    )


def promote(step: Step) -> None:
    """Promoting, in three moves: all traffic to the candidate (entered with it), then the stable Deployment
    on the candidate's version once the route carries that, then all traffic back to stable."""
    status, observed = step.status, step.observed
    assert status.candidate is not None
    route = observed.route
    if status.step != 1:  # step 1 marks the stable Deployment moved to the candidate's version
        carried = route is not None and route.accepted and route.observed_generation >= route.generation
        if carried and step.elapsed(status.stage_started_at) >= WAIT_SECONDS:
            status.step = 1
        return
    if not step.ready("stable", status.candidate.digest):
        return
    promoted = status.candidate.model_copy(update={"since": step.now})
    status.stable = promoted
    status.weights = Weights()
    status.mirror_percent = 0
    step.tell(DeploymentReason.PROMOTED, f"promoted {promoted.digest}: stable serves it to every request")
    step.stage(Stage.SUCCEEDED)
    step.decision.delete.extend(serving.server_objects(step.mdep, "candidate"))
    step.condition(
        DeploymentConditionType.ROLLED_BACK, False, DeploymentReason.PROMOTED, f"promoted {promoted.digest}"
    )


def roll_back(step: Step, reason: DeploymentReason, message: str, *, by: str | None = None) -> None:
    status = step.status
    status.weights = Weights()
    status.mirror_percent = 0
    step.tell(reason, f"rolled back: {message}", warning=True, by=by)
    step.stage(Stage.ROLLED_BACK)
    step.decision.delete.extend(serving.server_objects(step.mdep, "candidate"))
    step.condition(DeploymentConditionType.ROLLED_BACK, True, reason, message)
