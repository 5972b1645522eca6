"""The FineTuneJob runtime: one reconcile loop per FineTuneJob (`loops.Loops`: wake on events, sleep,
back off, report repeated failures), each step observe -> reconcile -> act.

- A job's loop ends when it reaches a terminal phase (reconcile asks for no requeue).
- A `PermanentError`, or a child the API server refuses as invalid (422), fails the job with its reason.
- After repeated failures the job gets a ReconcileError condition saying what fails; the first step that
  succeeds again sets it False.
- Read-your-writes: the next step waits (briefly) until the watches show the status and Jobs it wrote.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from finetune_api.base import API_VERSION
from finetune_api.v1alpha1 import ConditionType, FineTuneJob, Reason
from finetune_operator.handlers import parse
from finetune_operator.handlers.loops import (
    CATCH_UP_SECONDS,
    FAILURES_TO_REPORT,
    MAX_BACKOFF,
    STEPS_AT_ONCE,
    Key,
    Loops,
    ObjectLog,
    Worker,
)
from finetune_operator.handlers.loops import now as _now
from finetune_operator.handlers.observe import Observer
from finetune_operator.kube.client import KubeClient, KubeError
from finetune_operator.metrics import METRICS, Metrics
from finetune_operator.observed import Decision
from finetune_operator.reconcile import invalid_spec, reconcile
from finetune_operator.reconcile import status as st

__all__ = ["FAILURES_TO_REPORT", "MAX_BACKOFF", "Expected", "Runtime", "act"]


@dataclass
class Expected:
    """What the last actions wrote, until the watches show it (read-your-writes for the next loop)."""

    status: dict[str, Any] | None = None
    children: tuple[str, ...] = ()

    def seen(self, worker: Worker, key: Key) -> bool:
        status_ok = self.status is None or parse.status_of(worker.body) == self.status
        names = {j.name for j in worker.indexes["child_jobs"].get(key, [])}
        return status_ok and all(name in names for name in self.children)


async def act(
    decision: Decision, job: FineTuneJob, kube: KubeClient, logger: ObjectLog, metrics: Metrics = METRICS
) -> Expected:
    """Children first, then the EvalGate's history, then events, then status: status is the commit point
    users and reconcile read, so whatever it says has already happened and been told."""
    namespace = job.metadata.namespace or ""
    for manifest in decision.create:
        await kube.create(namespace, manifest)
    for manifest in decision.apply:
        await kube.apply(namespace, manifest)
    gate = job.spec.eval_gate_ref
    if decision.gate_status is not None and gate is not None:
        await kube.patch_status(
            namespace,
            gate.name,
            decision.gate_status.dump(),
            kind="EvalGate",
            resource_version=decision.gate_resource_version,
        )
    involved = {
        "apiVersion": API_VERSION,
        "kind": "FineTuneJob",
        "name": job.metadata.name,
        "namespace": namespace,
        "uid": job.metadata.uid,
    }
    now = _now().isoformat(timespec="seconds").replace("+00:00", "Z")
    for event in decision.events:
        try:
            await kube.event(involved, event.type, event.reason, event.message, now)
        except KubeError as err:  # events are best effort; the status below still tells the story
            logger.warning(f"could not record event {event.reason}: {err}")
    status = decision.status.dump()
    written = None
    if status != job.status.dump():
        await kube.patch_status(namespace, job.metadata.name, status)
        metrics.record(job, decision.status, _now())
        written = status
    jobs = tuple(m["metadata"]["name"] for m in decision.create if m["kind"] == "Job")
    return Expected(written, jobs)


def _recovered(decision: Decision, job: FineTuneJob, now: dt.datetime) -> Decision:
    """The decision, with a ReconcileError condition left by earlier failures set back to False."""
    previous = st.condition(decision.status.conditions, ConditionType.RECONCILE_ERROR)
    if previous is None or previous.status != "True":
        return decision
    status = decision.status.model_copy(deep=True)  # (a terminal job's decision is its own status)
    status.conditions = st.set_condition(
        status.conditions,
        ConditionType.RECONCILE_ERROR,
        "False",
        Reason.RECONCILED,
        "reconciled again after the failures above",
        now=now,
        generation=job.metadata.generation,
    )
    decision.status = status
    return decision


class Runtime(Loops):
    """Every FineTuneJob's loop in one operator process, keyed by (namespace, name)."""

    def __init__(
        self,
        kube: KubeClient,
        observer: Observer,
        *,
        steps_at_once: int = STEPS_AT_ONCE,
        catch_up_seconds: float = CATCH_UP_SECONDS,
        reconcile_fn: Callable[..., Decision] = reconcile,
        metrics: Metrics = METRICS,
    ) -> None:
        super().__init__(metrics=metrics, steps_at_once=steps_at_once, catch_up_seconds=catch_up_seconds)
        self.kube = kube
        self.observer = observer
        self.reconcile = reconcile_fn
        metrics.loops.set_function(lambda: len(self.workers))

    async def step(self, worker: Worker, key: Key, logger: ObjectLog) -> tuple[float | None, Expected]:
        """One observe -> reconcile -> act. Its own frame, so that the models and manifests it builds are
        freed before the loop sleeps: thousands of parked loops hold only what the next step needs."""
        job, problem = parse.load(worker.body)
        try:
            if problem is not None:
                decision = invalid_spec(job, problem, _now())
            else:
                observed = await self.observer.observe(job, worker.indexes)
                if observed.gate is not None:
                    self.metrics.gate_read(job.metadata.namespace or "", observed.gate)
                decision = self.reconcile(observed, self.observer.settings)
            decision = _recovered(decision, job, _now())
            return decision.requeue_after, await act(decision, job, self.kube, logger, self.metrics)
        except KubeError as err:
            if err.status != 422 or problem is not None:
                raise
            # a child the spec makes invalid (reconcile has already turned PermanentErrors into Failed)
            message = f"the API server refused a child object: {err.message}"
            return None, await act(invalid_spec(job, message, _now()), job, self.kube, logger, self.metrics)

    async def report(self, worker: Worker, key: Key, logger: ObjectLog, err: Exception) -> None:
        """Say on the job that its reconcile keeps failing, and with what."""
        job, _ = parse.load(worker.body)
        status = job.status.model_copy(deep=True)
        status.conditions = st.set_condition(
            status.conditions,
            ConditionType.RECONCILE_ERROR,
            "True",
            Reason.RECONCILE_FAILING,
            f"reconcile failed {FAILURES_TO_REPORT} or more times in a row, retrying with backoff up to "
            f"{MAX_BACKOFF:.0f}s: {type(err).__name__}: {err}",
            now=_now(),
            generation=job.metadata.generation,
        )
        if status.dump() == job.status.dump():
            return
        await self.kube.patch_status(job.metadata.namespace or "", job.metadata.name, status.dump())
