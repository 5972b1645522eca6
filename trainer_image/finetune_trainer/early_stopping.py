"""Early stopping (`spec.earlyStopping`, on by default): stop when the held-out metric stops improving.

What is watched: `datasets.validation` when given. Without it, `held_out` sets aside a seeded share of the
training rows, after the data gates (so never a row dropped as a duplicate or one that leaks into the
validation or holdout files): `holdoutShare` of them, at least `EARLY_STOPPING_MIN_ROWS` and at most
`EARLY_STOPPING_MAX_ROWS`; with fewer than `EARLY_STOPPING_MIN_TRAINING` training rows nothing is held out
and the run trains every step. The run evaluates `evaluations` times (at least once an epoch), saving a
checkpoint at each evaluation, unless `checkpointing.saveSteps` sets the interval of both.

The rule: the metric (eval loss, lower is better; for RFT the grader's mean score, higher is better) must
improve on the best so far by at least `minDelta`; after `patience` evaluations in a row that do not,
training stops at that step, which is saved. Why it stopped is written into that checkpoint's marker and
the progress report, so `kubectl get ftj` shows "stopped early" and the Trained condition says why. A
resumed run replays the evaluations in its restored log history, so the count survives a restart.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, TypeVar

from transformers import TrainerCallback

from finetune_api.v1alpha1.finetunejob import EarlyStopping

T = TypeVar("T")
LOGGED = {
    "eval_loss": "eval_loss",
    "grader_score": "eval_reward",
}  # the watched metric as the Trainer logs it


def held_out(rows: Sequence[T], settings: EarlyStopping, seed: int) -> tuple[list[T], list[T]]:
    """(rows to train on, rows held out to watch), the held-out rows drawn with `seed`; nothing is held
    out with fewer than `EARLY_STOPPING_MIN_TRAINING` rows. The training rows keep their order."""
    count = settings.held_out_rows(len(rows))
    if not count:
        return list(rows), []
    chosen = set(random.Random(seed).sample(range(len(rows)), count))
    return [r for i, r in enumerate(rows) if i not in chosen], [rows[i] for i in sorted(chosen)]


class StopWhenFlat(TrainerCallback):
    """Stops training after `patience` evaluations without an improvement of `min_delta`; `reason` says
    why once it has (None until then)."""

    def __init__(self, settings: EarlyStopping, metric: str) -> None:
        self.key = LOGGED[metric]
        self.higher = metric == "grader_score"
        self.patience = settings.patience
        self.min_delta = settings.min_delta
        self.best: tuple[float, int] | None = None  # (value, step)
        self.flat = 0  # evaluations in a row without an improvement
        self.reason: str | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        for entry in state.log_history:  # a resumed run: the evaluations before the restart count
            if self.key in entry:
                self._observe(float(entry[self.key]), int(entry.get("step", 0)))

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **_: Any
    ) -> None:
        value = (metrics or {}).get(self.key)
        if value is None:
            return
        self._observe(float(value), state.global_step)
        if self.flat >= self.patience and state.global_step < state.max_steps:
            best, at = self.best or (value, state.global_step)
            name = self.key.removeprefix("eval_").replace("_", " ")
            self.reason = (
                f"stopped early at step {state.global_step} of {state.max_steps}: held-out {name} did not "
                f"improve by {self.min_delta:g} in {self.flat} evaluations (best {best:.4g} at step {at})"
            )
            print(self.reason, flush=True)
            control.should_training_stop = True
            control.should_save = True

    def _observe(self, value: float, step: int) -> None:
        if self.best is None:
            self.best, self.flat = (value, step), 0
            return
        gain = value - self.best[0] if self.higher else self.best[0] - value
        if gain >= self.min_delta:
            self.best, self.flat = (value, step), 0
        else:
            self.flat += 1
            if (value > self.best[0]) == self.higher and value != self.best[0]:
                self.best = (value, step)  # better, though not by enough: still the best seen
