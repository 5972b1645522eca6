"""The controller runtime: one reconcile loop per FineTuneJob, observe -> reconcile -> act -> sleep.

- Events on the job or its children wake its loop early; otherwise it sleeps as long as the decision asked
  (15 s while training, for progress). One loop per object means no two reconciles of the same job race.
  At most `steps_at_once` steps run at a time, so a burst of thousands of new jobs waits holding nothing.
- A loop never dies quietly. Whatever a step raises is logged with the job's name (with its traceback
  when it is not an API error) and retried with exponential backoff up to MAX_BACKOFF; after
  FAILURES_TO_REPORT failures in a row the job gets a ReconcileError condition saying what fails, and the
  first step that succeeds again sets it False. A `TemporaryError` waits its own delay; a
  `PermanentError`, or a child the API server refuses as invalid (422), fails the job with its reason.
- Read-your-writes: before the next step, the loop waits (briefly) until the watches show its last writes.
- Kopf's own per-object logger keeps the body of the event it was made for; the loop logs through its own
  `[namespace/name]` logger and starts in a fresh context, so a parked loop holds only its trimmed body.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from finetune_api.base import API_VERSION
from finetune_api.errors import TemporaryError
from finetune_api.v1alpha1 import ConditionType, FineTuneJob, Reason
from finetune_operator.handlers import parse
from finetune_operator.handlers.observe import Indexes, Observer
from finetune_operator.kube.client import KubeClient, KubeError
from finetune_operator.metrics import METRICS, Metrics
from finetune_operator.observed import Decision, JobObservation
from finetune_operator.reconcile import invalid_spec, reconcile
from finetune_operator.reconcile import status as st

LOG = logging.getLogger("finetune_operator")
CATCH_UP_SECONDS = 5.0
STEPS_AT_ONCE = 32  # a burst of new jobs queues here, before anything is built for them
MAX_BACKOFF = 60.0
FAILURES_TO_REPORT = 3  # failures in a row before the job says so in a condition


class JobLog(logging.LoggerAdapter[logging.Logger]):
    """A job's log lines, prefixed `[namespace/name]` as Kopf prefixes them."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{(self.extra or {}).get('ref')}] {msg}", kwargs


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Expected:
    """What the last actions wrote, until the watches show it (read-your-writes for the next loop)."""

    status: dict[str, Any] | None = None
    children: tuple[str, ...] = ()

    def seen(self, body: bytes, jobs: list[JobObservation]) -> bool:
        status_ok = self.status is None or parse.status_of(body) == self.status
        names = {j.name for j in jobs}
        return status_ok and all(name in names for name in self.children)


@dataclass
class Worker:
    """The reconcile loop of one FineTuneJob, fed the newest body by the watch (trimmed: parse.essence)."""

    body: bytes
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


async def act(
    decision: Decision, job: FineTuneJob, kube: KubeClient, logger: JobLog, metrics: Metrics = METRICS
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


class Runtime:
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
        self.kube = kube
        self.observer = observer
        self.workers: dict[tuple[str, str], Worker] = {}
        self.steps = asyncio.Semaphore(steps_at_once)
        self.catch_up_seconds = catch_up_seconds
        self.reconcile = reconcile_fn
        self.metrics = metrics
        metrics.loops.set_function(lambda: len(self.workers))

    def wake(self, namespace: str | None, name: str | None) -> None:
        worker = self.workers.get((namespace or "", name or ""))
        if worker is not None:
            worker.wake.set()

    def feed(self, namespace: str, name: str, body: bytes, indexes: Indexes) -> None:
        """The newest body of a job: wake its loop, or start one."""
        key = (namespace, name)
        worker = self.workers.get(key)
        if worker is not None:
            worker.body = body
            worker.wake.set()
            return
        worker = Worker(body=body)
        logger = JobLog(LOG, {"ref": f"{namespace}/{name}"})
        # A fresh context: a task copies its creator's, and Kopf's context variables hold this event's
        # cause, whole body included, which the loop would otherwise keep alive for the job's lifetime.
        worker.task = asyncio.create_task(
            self._loop(worker, key, logger, indexes), context=contextvars.Context()
        )
        self.workers[key] = worker

    def stop(self, namespace: str, name: str) -> None:
        worker = self.workers.get((namespace, name))
        if worker is not None and worker.task is not None:
            worker.task.cancel()

    async def close(self) -> None:
        tasks = [w.task for w in self.workers.values() if w.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _step(self, worker: Worker, logger: JobLog, indexes: Indexes) -> tuple[float | None, Expected]:
        """One observe -> reconcile -> act. Its own frame, so that the models and manifests it builds are
        freed before the loop sleeps: thousands of parked loops hold only what the next step needs."""
        job, problem = parse.load(worker.body)
        try:
            if problem is not None:
                decision = invalid_spec(job, problem, _now())
            else:
                observed = await self.observer.observe(job, indexes)
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

    async def _loop(self, worker: Worker, key: tuple[str, str], logger: JobLog, indexes: Indexes) -> None:
        """Reconcile one FineTuneJob until it reaches a terminal phase; cancelled when it is deleted."""
        backoff, failures = 1.0, 0
        expected = Expected()
        try:
            while True:
                await self._catch_up(expected, worker, indexes, key)
                worker.wake.clear()
                try:
                    async with self.steps:
                        started = time.perf_counter()
                        try:
                            requeue_after, expected = await self._step(worker, logger, indexes)
                        finally:
                            self.metrics.reconcile_duration.observe(time.perf_counter() - started)
                except asyncio.CancelledError:
                    raise
                except TemporaryError as err:
                    logger.info(f"{err.reason}: {err.message}; looking again in {err.delay:.0f}s")
                    requeue_after, expected = err.delay, Expected()
                except Exception as err:
                    failures += 1
                    self.metrics.reconcile_errors.labels(type(err).__name__).inc()
                    if isinstance(err, KubeError):
                        logger.warning(f"reconcile failed, retrying in {backoff:.0f}s: {err}")
                    else:
                        logger.exception(
                            f"reconcile failed, retrying in {backoff:.0f}s: {type(err).__name__}: {err}"
                        )
                    if failures >= FAILURES_TO_REPORT:
                        await self._report(worker, logger, err)
                    requeue_after, expected = backoff, Expected()
                    backoff = min(backoff * 2, MAX_BACKOFF)
                else:
                    backoff, failures = 1.0, 0
                    if requeue_after is None:
                        return  # terminal: nothing more will change
                await self._sleep(worker, requeue_after)
        finally:
            if self.workers.get(key) is worker:
                del self.workers[key]

    async def _report(self, worker: Worker, logger: JobLog, err: Exception) -> None:
        """Say on the job that its reconcile keeps failing, and with what (best effort)."""
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
        try:
            await self.kube.patch_status(job.metadata.namespace or "", job.metadata.name, status.dump())
        except Exception as report_err:
            logger.warning(f"could not record the ReconcileError condition: {report_err}")

    async def _catch_up(
        self, expected: Expected, worker: Worker, indexes: Indexes, key: tuple[str, str]
    ) -> None:
        """Wait (briefly) until the watches deliver our own last writes, so reconcile never acts on a view
        older than what it just did. Each write comes back as a watch event that wakes the worker; proceeds
        anyway after `catch_up_seconds` (creates are idempotent)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.catch_up_seconds
        while not expected.seen(worker.body, list(indexes["child_jobs"].get(key, []))):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            worker.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(worker.wake.wait(), timeout=remaining)

    @staticmethod
    async def _sleep(worker: Worker, seconds: float) -> None:
        timer = asyncio.get_running_loop().call_later(seconds, worker.wake.set)
        try:  # a timer, not wait_for: a parked loop is one task, not two
            await worker.wake.wait()
        finally:
            timer.cancel()
