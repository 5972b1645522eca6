"""The generic reconcile loop (handlers.loops.Loops) that FineTuneJobs and ModelDeployments share: one loop
per object, fed and woken by the watch, backing off on failures (reported after FAILURES_TO_REPORT in a
row, and a failing report does not end the loop), waiting a TemporaryError's own delay, ending when a
step says the object is finished. Sleeps are recorded, not slept."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from finetune_api.errors import TemporaryError
from finetune_operator.handlers import loops
from finetune_operator.handlers.loops import (
    FAILURES_TO_REPORT,
    NOTHING,
    Key,
    Loops,
    ObjectLog,
    Settled,
    Worker,
)
from finetune_operator.metrics import Metrics


class Scripted(Loops):
    """Each step takes the next outcome: an exception to raise, or a requeue (None: finished)."""

    def __init__(self, outcomes: list[Any], *, report_fails: bool = False) -> None:
        super().__init__(metrics=Metrics(), catch_up_seconds=0.0)
        self.outcomes = outcomes
        self.bodies: list[bytes] = []
        self.reports: list[str] = []
        self.report_fails = report_fails

    async def step(self, worker: Worker, key: Key, logger: ObjectLog) -> tuple[float | None, Settled]:
        self.bodies.append(worker.body)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome, NOTHING

    async def report(self, worker: Worker, key: Key, logger: ObjectLog, err: Exception) -> None:
        self.reports.append(f"{type(err).__name__}: {err}")
        if self.report_fails:
            raise RuntimeError("the API server refused the report")


def run(runtime: Scripted, monkeypatch: pytest.MonkeyPatch, feeds: int = 1) -> list[float]:
    slept: list[float] = []

    async def sleep(worker: Worker, seconds: float) -> None:
        slept.append(seconds)
        await asyncio.sleep(0)

    monkeypatch.setattr(Loops, "_sleep", staticmethod(sleep))

    async def main() -> None:
        for i in range(feeds):
            runtime.feed("ns", "obj", f"body-{i}".encode(), {})
        task = runtime.workers[("ns", "obj")].task
        assert task is not None
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    return slept


def test_failures_back_off_are_reported_after_repeated_failures_and_a_success_resets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fault = ValueError("injected")
    runtime = Scripted([fault, fault, fault, fault, 7.0, fault, None])
    slept = run(runtime, monkeypatch)
    assert slept == [1.0, 2.0, 4.0, 8.0, 7.0, 1.0]  # exponential, then reset by the success
    assert runtime.reports == ["ValueError: injected"] * (4 - FAILURES_TO_REPORT + 1)
    assert runtime.workers == {}  # finished: the loop is gone
    errors = runtime.metrics.registry.get_sample_value(
        "finetune_operator_reconcile_errors_total", {"error": "ValueError"}
    )
    assert errors == 5


def test_a_temporary_error_waits_its_own_delay_and_a_failing_report_does_not_end_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fault = KeyError("boom")
    runtime = Scripted(
        [TemporaryError("Waiting", "not yet", delay=30), fault, fault, fault, None], report_fails=True
    )
    slept = run(runtime, monkeypatch)
    assert slept == [30, 1.0, 2.0, 4.0]
    assert len(runtime.reports) == 1
    assert runtime.workers == {}


def test_feeding_a_running_loop_gives_it_the_newest_body(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = Scripted([None])
    run(runtime, monkeypatch, feeds=3)
    assert runtime.bodies == [b"body-2"]  # one loop per object; the newest body wins


def test_the_log_names_the_object() -> None:
    logger = ObjectLog(loops.LOG, {"ref": "ns/obj"})
    assert logger.process("failed", {}) == ("[ns/obj] failed", {})
