"""The generic part of a controller runtime: one reconcile loop per object, observe -> reconcile -> act ->
sleep, whatever the kind. `runtime.Runtime` (FineTuneJobs) and `deployments.DeploymentRuntime`
(ModelDeployments) say what one step does and how a failure is reported on their object; this module
owns the rest.

- Events on the object or its children wake its loop early; otherwise it sleeps as long as the step asked.
  One loop per object means no two reconciles of the same object race. At most `steps_at_once` steps run
  at a time, so a burst of thousands of new objects waits holding nothing.
- A loop never dies quietly. Whatever a step raises is logged with the object's name (with its traceback
  when it is not an API error) and retried with exponential backoff up to MAX_BACKOFF; after
  FAILURES_TO_REPORT failures in a row the kind's `report` says so on the object (a ReconcileError
  condition), and the first step that succeeds again clears it. A `TemporaryError` waits its own delay.
- Read-your-writes: before the next step, the loop waits (briefly) until the watches show its last writes
  (`Settled.seen`).
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
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from finetune_api.errors import TemporaryError
from finetune_operator.kube.client import KubeError
from finetune_operator.metrics import Metrics

LOG = logging.getLogger("finetune_operator")
CATCH_UP_SECONDS = 5.0
STEPS_AT_ONCE = 32  # a burst of new objects queues here, before anything is built for them
MAX_BACKOFF = 60.0
FAILURES_TO_REPORT = 3  # failures in a row before the object says so in a condition
Indexes = Mapping[str, Mapping[Any, Any]]
Key = tuple[str, str]


class ObjectLog(logging.LoggerAdapter[logging.Logger]):
    """An object's log lines, prefixed `[namespace/name]` as Kopf prefixes them."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{(self.extra or {}).get('ref')}] {msg}", kwargs


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Worker:
    """The reconcile loop of one object, fed the newest (trimmed) body and the live indexes by the watch."""

    body: bytes
    indexes: Indexes
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Settled(Protocol):
    """What a step wrote, until the watches show it."""

    def seen(self, worker: Worker, key: Key) -> bool: ...


class _Nothing:
    def seen(self, worker: Worker, key: Key) -> bool:
        return True


NOTHING: Settled = _Nothing()


class Loops(ABC):
    """Every loop of one kind in one operator process, keyed by (namespace, name)."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        steps_at_once: int = STEPS_AT_ONCE,
        catch_up_seconds: float = CATCH_UP_SECONDS,
    ) -> None:
        self.workers: dict[Key, Worker] = {}
        self.steps = asyncio.Semaphore(steps_at_once)
        self.catch_up_seconds = catch_up_seconds
        self.metrics = metrics

    @abstractmethod
    async def step(self, worker: Worker, key: Key, logger: ObjectLog) -> tuple[float | None, Settled]:
        """One observe -> reconcile -> act: when to look again (None: never, the object is finished) and
        what it wrote. Raises whatever fails; the loop retries it."""

    @abstractmethod
    async def report(self, worker: Worker, key: Key, logger: ObjectLog, err: Exception) -> None:
        """Say on the object that its reconcile keeps failing, and with what (best effort: never raises)."""

    def wake(self, namespace: str | None, name: str | None) -> None:
        worker = self.workers.get((namespace or "", name or ""))
        if worker is not None:
            worker.wake.set()

    def feed(self, namespace: str, name: str, body: bytes, indexes: Indexes) -> None:
        """The newest body of an object: wake its loop, or start one."""
        key = (namespace, name)
        worker = self.workers.get(key)
        if worker is not None:
            worker.body = body
            worker.indexes = indexes
            worker.wake.set()
            return
        worker = Worker(body=body, indexes=indexes)
        logger = ObjectLog(LOG, {"ref": f"{namespace}/{name}"})
        # A fresh context: a task copies its creator's, and Kopf's context variables hold this event's
        # cause, whole body included, which the loop would otherwise keep alive for the object's lifetime.
        worker.task = asyncio.create_task(self._loop(worker, key, logger), context=contextvars.Context())
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

    async def _loop(self, worker: Worker, key: Key, logger: ObjectLog) -> None:
        """Reconcile one object until a step says it is finished; cancelled when it is deleted."""
        backoff, failures = 1.0, 0
        settled: Settled = NOTHING
        try:
            while True:
                await self._catch_up(settled, worker, key)
                worker.wake.clear()
                try:
                    async with self.steps:
                        started = time.perf_counter()
                        try:
                            requeue_after, settled = await self.step(worker, key, logger)
                        finally:
                            self.metrics.reconcile_duration.observe(time.perf_counter() - started)
                except asyncio.CancelledError:
                    raise
                except TemporaryError as err:
                    logger.info(f"{err.reason}: {err.message}; looking again in {err.delay:.0f}s")
                    requeue_after, settled = err.delay, NOTHING
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
                        try:
                            await self.report(worker, key, logger, err)
                        except Exception as report_err:  # a report must not end the loop either
                            logger.warning(f"could not record the ReconcileError condition: {report_err}")
                    requeue_after, settled = backoff, NOTHING
                    backoff = min(backoff * 2, MAX_BACKOFF)
                else:
                    backoff, failures = 1.0, 0
                    if requeue_after is None:
                        return  # finished: nothing more will change
                await self._sleep(worker, requeue_after)
        finally:
            if self.workers.get(key) is worker:
                del self.workers[key]

    async def _catch_up(self, settled: Settled, worker: Worker, key: Key) -> None:
        """Wait (briefly) until the watches deliver our own last writes, so reconcile never acts on a view
        older than what it just did. Each write comes back as a watch event that wakes the worker; proceeds
        anyway after `catch_up_seconds` (writes are idempotent)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.catch_up_seconds
        while not settled.seen(worker, key):
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
