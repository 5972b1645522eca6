"""What a trainer writes under its run's staging prefix, and how the operator reads it back.

This is the trainer -> operator reporting path. Object storage is the channel because checkpoints must
live there anyway; the operator needs no network path into pods, and the trainer needs no Kubernetes
credentials. Everything is JSON, each object replaced whole (S3 PUT is atomic per object):

    <staging>/data-report.json                    written once by validate-data (pass or fail)
    <staging>/progress.json                       replaced by train at most every 15 s
    <staging>/checkpoints/step-000000120/...      weights, tokenizer, trainer state
    <staging>/checkpoints/step-000000120/COMPLETE marker with the checkpoint's metrics, written last
    <staging>/holdout-base.json, holdout-latest.json   the holdout metric before and after (score-holdout)
    <staging>/eval/examples.jsonl                 per-example records of `evaluate`, written first
    <staging>/eval/report.json                    the evaluation report (`finetune_api.gate`), written last

A checkpoint without its COMPLETE marker is partial and ignored (a crash mid-save leaves no half
checkpoint behind for anyone to load); a restarted run resumes from the newest complete one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from finetune_api.base import ApiModel, Text, TokenLengths

DATA_REPORT = "data-report.json"
PROGRESS = "progress.json"
CHECKPOINTS = "checkpoints/"
COMPLETE_MARKER = "COMPLETE"
EVAL_REPORT = "eval/report.json"
EVAL_EXAMPLES = "eval/examples.jsonl"
PROGRESS_INTERVAL_SECONDS = 15

HoldoutModel = Literal["base", "latest"]


def checkpoint_prefix(step: int) -> str:
    return f"{CHECKPOINTS}step-{step:09d}/"


def holdout_score(which: HoldoutModel) -> str:
    return f"holdout-{which}.json"


@dataclass(frozen=True)
class StagingLayout:
    """Every location under one run's staging prefix. `root` is an s3:// prefix or a local folder, ending
    in '/', so each location is the root and a relative key: the same on S3 and on a local disk."""

    root: str

    def __post_init__(self) -> None:
        if not self.root.endswith("/"):
            raise ValueError(f"a staging root ends with '/': {self.root!r}")

    @property
    def data_report(self) -> str:
        return self.root + DATA_REPORT

    @property
    def progress(self) -> str:
        return self.root + PROGRESS

    @property
    def checkpoints(self) -> str:
        return self.root + CHECKPOINTS

    def checkpoint(self, step: int) -> str:
        return self.root + checkpoint_prefix(step)

    def holdout_score(self, which: HoldoutModel) -> str:
        return self.root + holdout_score(which)

    @property
    def eval_report(self) -> str:
        return self.root + EVAL_REPORT

    @property
    def eval_examples(self) -> str:
        return self.root + EVAL_EXAMPLES


def step_of(key: str) -> int | None:
    """The step of a `checkpoints/step-NNNNNNNNN/COMPLETE` key, or None for any other key."""
    parts = key.split("/")
    if len(parts) < 3 or parts[-1] != COMPLETE_MARKER or not parts[-2].startswith("step-"):
        return None
    digits = parts[-2].removeprefix("step-")
    return int(digits) if digits.isdigit() else None


class DataValidationReport(ApiModel):
    """The outcome of `validate-data`; the operator copies the counts into FineTuneJob status."""

    passed: bool
    rows: dict[str, int] = Field(default_factory=dict, description="Valid rows per split.")
    duplicate_rate: float = 0.0
    leakage_rate: float = 0.0
    pii_findings: dict[str, int] = Field(default_factory=dict)
    dropped: dict[str, int] = Field(default_factory=dict)
    tokens: TokenLengths | None = Field(
        default=None, description="Estimated tokens of one training row (after drops): for the auto rule."
    )
    failed_rules: Annotated[list[Text], Field(max_length=32)] = Field(
        default_factory=list, description='One line per failed gate, e.g. "duplicate rate 4.1% > 2.0%".'
    )
    problems: Annotated[list[Text], Field(max_length=50)] = Field(
        default_factory=list, description="The first malformed rows: file, line, field."
    )
    examples: dict[str, Annotated[list[Text], Field(max_length=5)]] = Field(
        default_factory=dict,
        description="Up to five offending rows per check (duplicate, leakage, pii, tie...): where and why.",
    )


class ProgressReport(ApiModel):
    step: Annotated[int, Field(ge=0)]
    total_steps: Annotated[int, Field(ge=1)]
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    tokens_per_second: float | None = None
    stopped_early: Text | None = None  # why training ended before its last step
    expected_seconds: float | None = Field(
        default=None,
        description="Seconds the run (what is left of it, when resumed) is expected to take, estimated "
        "before its first step from a documented throughput per device (the trainer's `flops.py`).",
    )
    updated_at: datetime


def duration(seconds: float) -> str:
    """A duration as kubectl prints ages, to the minute: "<1m", "12m", "1h05m", "2d03h" (the operator's
    ETA column, `finetune run` and the trainer's log alike)."""
    minutes = int(seconds // 60)
    if minutes < 1:
        return "<1m"
    hours, minutes = divmod(minutes, 60)
    if hours == 0:
        return f"{minutes}m"
    days, hours = divmod(hours, 24)
    return f"{hours}h{minutes:02d}m" if days == 0 else f"{days}d{hours:02d}h"


class CheckpointMarker(ApiModel):
    step: Annotated[int, Field(ge=0)]
    metrics: dict[str, float] = Field(default_factory=dict)
    stopped_early: Text | None = None  # on the checkpoint where early stopping ended training: why
    created_at: datetime | None = None


# What "best" means for a run's checkpoints, for the trainer's pruning and the run plan's candidate alike: the
# highest grader reward on the validation prompts (RFT), else the lowest eval loss; ties go to the later step.
BEST_BY_REWARD = "eval_reward"
BEST_BY_LOSS = "eval_loss"


def best_step(scored: Iterable[tuple[int, Mapping[str, float]]]) -> int | None:
    """The step of the best checkpoint among (step, metrics) pairs; None when none has an eval metric."""
    candidates = list(scored)
    rewarded = [(metrics[BEST_BY_REWARD], step) for step, metrics in candidates if BEST_BY_REWARD in metrics]
    if rewarded:
        return max(rewarded)[1]
    losses = [(metrics[BEST_BY_LOSS], -step) for step, metrics in candidates if BEST_BY_LOSS in metrics]
    return -min(losses)[1] if losses else None
