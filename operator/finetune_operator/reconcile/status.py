"""Status arithmetic for reconcile: conditions, progress with ETA, checkpoints. Pure."""

from __future__ import annotations

from datetime import datetime, timedelta

from finetune_api.plan import candidate
from finetune_api.run_layout import (
    CheckpointMarker,
    DataValidationReport,
    ProgressReport,
    StagingLayout,
    duration,
)
from finetune_api.v1alpha1 import Condition, ConditionType, Reason
from finetune_api.v1alpha1.conditions import ConditionStatus
from finetune_api.v1alpha1.finetunejob import MAX_CHECKPOINTS, CheckpointRecord, DataReport, Progress


def set_condition(
    conditions: list[Condition],
    type_: ConditionType | str,
    status: ConditionStatus,
    reason: Reason | str,
    message: str,
    *,
    now: datetime,
    generation: int | None,
) -> list[Condition]:
    """`conditions` with `type_` set; lastTransitionTime moves only when the status changes."""
    previous = next((c for c in conditions if c.type == type_), None)
    since = previous.last_transition_time if previous is not None and previous.status == status else now
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message[:1000],
        last_transition_time=since,
        observed_generation=generation,
    )
    return [updated if c.type == type_ else c for c in conditions] if previous else [*conditions, updated]


def condition(conditions: list[Condition], type_: ConditionType | str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def data_report(report: DataValidationReport, uri: str) -> DataReport:
    return DataReport(
        rows=report.rows,
        duplicate_rate=report.duplicate_rate,
        leakage_rate=report.leakage_rate,
        pii_findings=report.pii_findings,
        dropped=report.dropped,
        failed_rules=report.failed_rules,
        tokens=report.tokens,
        report_uri=uri,
    )


def progress(report: ProgressReport, started: datetime | None) -> Progress:
    """Progress as `kubectl get ftj` shows it; the ETA extrapolates the rate since training started, and
    before the first step it is the trainer's estimate (`expectedSeconds`).

    The time left is written as of the trainer's report (`updatedAt`), not as of this reconcile, so the
    status changes only when the trainer reports again (a date column would show a future ETA as
    `<invalid>`)."""
    step, total = report.step, report.total_steps
    percent = min(100, int(100 * step / total))
    eta = left = None
    if started is not None and 0 < step < total:
        elapsed = (report.updated_at - started).total_seconds()
        if elapsed > 0:
            left = timedelta(seconds=elapsed / step * (total - step))
    elif step == 0 and report.expected_seconds is not None:
        left = timedelta(seconds=report.expected_seconds)
    if left is not None:
        eta = report.updated_at + left
    return Progress(
        step=step,
        total_steps=total,
        epoch=report.epoch,
        loss=report.loss,
        eval_loss=report.eval_loss,
        tokens_per_second=report.tokens_per_second,
        percent=percent,
        summary=f"{step}/{total} (stopped early)" if report.stopped_early else f"{step}/{total} ({percent}%)",
        stopped_early=report.stopped_early,
        eta=eta,
        remaining=None if left is None else remaining(left),
        updated_at=report.updated_at,
    )


def remaining(left: timedelta) -> str:
    """A duration as kubectl prints ages, to the minute (`run_layout.duration`)."""
    return duration(left.total_seconds())


def checkpoint_records(
    markers: tuple[CheckpointMarker, ...], layout: StagingLayout
) -> list[CheckpointRecord]:
    """The newest MAX_CHECKPOINTS complete checkpoints, oldest first."""
    ordered = sorted(markers, key=lambda m: m.step)[-MAX_CHECKPOINTS:]
    return [
        CheckpointRecord(
            step=m.step,
            uri=layout.checkpoint(m.step),
            metrics=m.metrics,
            created_at=m.created_at,
        )
        for m in ordered
    ]


def best_checkpoint(records: list[CheckpointRecord]) -> CheckpointRecord | None:
    """The checkpoint a gate judges (`finetune_api.plan.candidate`): the best, otherwise the latest."""
    step = candidate((r.step, r.metrics) for r in records)
    return next((r for r in records if r.step == step), None)
