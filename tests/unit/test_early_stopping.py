"""Early stopping's two decisions: which training rows are held out to watch when there is no validation
file, and when a run whose held-out metric has gone flat stops (and what it says)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from transformers import TrainerControl

from finetune_api.device import Device
from finetune_api.plan import RunPlan
from finetune_api.v1alpha1 import FineTuneJob
from finetune_api.v1alpha1.finetunejob import EarlyStopping, Method
from finetune_trainer.early_stopping import StopWhenFlat, held_out
from helpers.support import example


def test_a_seeded_share_of_the_training_rows_is_held_out_within_its_bounds() -> None:
    rows = list(range(1000))
    train, watch = held_out(rows, EarlyStopping(), seed=42)
    assert len(watch) == 50
    assert len(train) == 950
    assert sorted(train + watch) == rows
    assert train == sorted(train)
    assert held_out(rows, EarlyStopping(), seed=42) == (train, watch)  # the same rows every attempt
    assert held_out(rows, EarlyStopping(), seed=7)[1] != watch
    assert len(held_out(list(range(40)), EarlyStopping(), seed=1)[1]) == 8  # at least 8
    assert len(held_out(list(range(100_000)), EarlyStopping(), seed=1)[1]) == 256  # at most 256
    assert held_out(list(range(31)), EarlyStopping(), seed=1) == (list(range(31)), [])  # too few: none


def evaluate(stop: StopWhenFlat, values: list[float], max_steps: int = 100) -> tuple[int | None, str | None]:
    """Feed one evaluation every 10 steps; (the step training stopped at, the reason)."""
    for k, value in enumerate(values, start=1):
        control = TrainerControl()
        state = SimpleNamespace(global_step=10 * k, max_steps=max_steps, log_history=[])
        stop.on_evaluate(None, state, control, metrics={stop.key: value})
        if control.should_training_stop:
            assert control.should_save  # the step it stops at is a checkpoint
            return 10 * k, stop.reason
    return None, stop.reason


def test_a_loss_that_keeps_falling_by_less_than_min_delta_stops_after_patience() -> None:
    # DPO's loss near zero: still falling, by less than 0.01, so the run has learned what it will
    step, reason = evaluate(StopWhenFlat(EarlyStopping(), "eval_loss"), [0.69, 0.2, 0.05, 0.045, 0.041, 0.04])
    assert step == 50
    assert reason == (
        "stopped early at step 50 of 100: held-out loss did not improve by 0.01 in 2 evaluations "
        "(best 0.041 at step 50)"
    )


def test_an_improving_loss_trains_on_and_one_flat_evaluation_is_forgiven() -> None:
    assert evaluate(StopWhenFlat(EarlyStopping(), "eval_loss"), [0.9, 0.8, 0.81, 0.7, 0.6, 0.5]) == (
        None,
        None,
    )


def test_a_grader_score_must_rise() -> None:
    settings = EarlyStopping(patience=1, min_delta=0.05)
    assert settings.watched(Method.RFT) == "grader_score"
    assert settings.watched(Method.SFT) == "eval_loss"
    step, reason = evaluate(StopWhenFlat(settings, "grader_score"), [0.1, 0.3, 0.32])
    assert step == 30
    assert reason is not None
    assert "held-out reward did not improve by 0.05" in reason


def test_the_last_step_is_not_an_early_stop() -> None:
    assert evaluate(StopWhenFlat(EarlyStopping(), "eval_loss"), [0.5, 0.5, 0.5], max_steps=30) == (None, None)


def test_a_resumed_run_counts_the_evaluations_before_the_restart() -> None:
    stop = StopWhenFlat(EarlyStopping(), "eval_loss")
    history = [{"eval_loss": 0.5, "step": 10}, {"loss": 0.4, "step": 15}, {"eval_loss": 0.499, "step": 20}]
    stop.on_train_begin(None, SimpleNamespace(log_history=history), TrainerControl())
    control = TrainerControl()
    stop.on_evaluate(
        None, SimpleNamespace(global_step=30, max_steps=100), control, metrics={"eval_loss": 0.498}
    )
    assert control.should_training_stop


@pytest.mark.parametrize("share", [0.0, 0.6])
def test_the_held_out_share_is_bounded(share: float) -> None:
    with pytest.raises(ValueError, match=r"holdout_share|holdoutShare"):
        EarlyStopping(holdout_share=share)


def test_the_plan_counts_only_the_rows_left_to_train_on() -> None:
    """`finetune run` prints the plan before the trainer holds rows out: its steps must be the trainer's."""

    manifest = example("quickstart-dpo.yaml")  # no validation file: 8 of its 96 rows are held out
    assert "validation" not in manifest["spec"]["datasets"]
    plan = RunPlan.of(FineTuneJob.model_validate(manifest))
    assert plan.resolve(96, device=Device.cpu()).steps == 11  # 88 rows, batch 8, one epoch
    manifest["spec"]["earlyStopping"] = {"enabled": False}
    plan = RunPlan.of(FineTuneJob.model_validate(manifest))
    assert plan.resolve(96, device=Device.cpu()).steps == 12
