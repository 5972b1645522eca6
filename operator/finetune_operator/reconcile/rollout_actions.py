"""Manual control of a rollout: what the `finetune.dev/rollout-action` annotation does (see
`reconcile.rollout`'s docstring), and when a changed spec.model supersedes a running rollout. Pure."""

from __future__ import annotations

from finetune_api.v1alpha1.modeldeployment import ROLLOUT_ACTIONS
from finetune_api.v1alpha1.modeldeployment_status import (
    DeploymentConditionType,
    DeploymentReason,
    RolloutStage,
)
from finetune_operator.reconcile.rollout_step import Step
from finetune_operator.reconcile.rollout_transitions import enter_promoting, enter_step, roll_back

Stage = RolloutStage


def act_on_action(step: Step) -> None:
    observed, status = step.observed, step.status
    action, by = observed.action, observed.action_by
    paused = action == "pause" and observed.action_problem is None
    was_paused = status.paused  # a resume written over a pause annotation ends that pause
    if action is not None and observed.action_problem is not None:
        step.condition(
            DeploymentConditionType.PAUSED,
            False,
            DeploymentReason.ACTION_IGNORED,
            f"{action} ignored: {observed.action_problem}",
        )
    if paused != status.paused:
        status.paused = paused
        if paused:
            step.tell(DeploymentReason.PAUSED, "paused: no stage or step advances until resumed", by=by)
        else:
            step.tell(DeploymentReason.RESUMED, "resumed", by=by)
    if action is None or observed.action_problem is not None or action == "pause":
        return
    step.decision.clear_action = True
    active = Stage(status.stage).active
    if action not in ROLLOUT_ACTIONS:
        step.tell(
            DeploymentReason.ACTION_IGNORED,
            f"unknown action {action!r}: use one of {', '.join(ROLLOUT_ACTIONS)}",
            warning=True,
            by=by,
        )
    elif action == "resume":
        if active and status.stage == Stage.CANARY and current_step_is_pause(step):
            step.tell(DeploymentReason.RESUMED, f"resumed at pause step {status.step}", by=by)
            enter_step(step, (status.step or 0) + 1)
        elif not active or not was_paused:
            step.tell(DeploymentReason.ACTION_IGNORED, "resume: nothing is paused", by=by)
    elif not active or status.stage == Stage.PROMOTING:
        step.tell(
            DeploymentReason.ACTION_IGNORED,
            f"{action}: no rollout to {action} now (stage {status.stage})",
            by=by,
        )
    elif action == "abort":
        roll_back(step, DeploymentReason.ABORTED, f"aborted by {by}", by=by)
    elif status.candidate is None or not step.ready("candidate", status.candidate.digest):
        step.tell(
            DeploymentReason.ACTION_IGNORED,
            "promote: the candidate's servers are not ready; promoting now would send every request to them",
            warning=True,
            by=by,
        )
    else:  # promote
        step.tell(
            DeploymentReason.PROMOTED_BY_USER, f"promoted by {by}: remaining checks and steps skipped", by=by
        )
        enter_promoting(step)


def superseded(step: Step) -> bool:
    """spec.model names a version that is neither stable, the candidate, nor the one last acted on."""
    status, wanted = step.status, step.mdep.spec.model.digest
    current = {status.spec_model_digest, status.stable.digest if status.stable else None}
    return wanted not in current and (status.candidate is None or wanted != status.candidate.digest)


def current_step_is_pause(step: Step) -> bool:
    steps = step.mdep.spec.rollout.canary.steps
    index = (step.status.step or 0) - 1
    return 0 <= index < len(steps) and steps[index].pause
