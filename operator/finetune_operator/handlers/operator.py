"""Kopf handlers: the only module that imports kopf. Thin: observe, call reconcile, carry out the decision.

- Indexes keep what the operator created (Jobs, pods, ConfigMaps, Services) in memory, fed by watches,
  reduced to what reconcile needs: observing costs no API calls.
- One worker task per FineTuneJob runs the loop observe -> reconcile -> act -> sleep. Events on the job
  or its children wake it early; otherwise it sleeps as long as the decision asked (15 s while training,
  for progress). One loop per object means no two reconciles of the same job ever race. At most
  STEPS_AT_ONCE steps run at a time, so a burst of thousands of new jobs waits in line holding nothing.
- Deletion: owner references let the garbage collector remove the children. Only with
  runPolicy.artifactCleanup Delete does an object carry a finalizer: it stops the Jobs, removes the run's
  staging prefix, and gives up on S3 after the cleanup deadline rather than block deletion forever.
- Kopf's own bookkeeping lives in `finetune.dev/*` annotations; status holds only declared fields.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import datetime as dt
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import kopf
from pydantic import ValidationError

from finetune_api.trainer_config import staging_uri, version_uri
from finetune_api.v1alpha1 import EvalGate, FineTuneJob, FineTuneJobStatus
from finetune_api.v1alpha1.common import ObjectMeta
from finetune_operator.builders.names import (
    ATTEMPT_LABEL,
    FINALIZER,
    JOB_LABEL,
    MANAGER,
    evaluation_job_name,
    promotion_job_name,
    run_id,
    validation_job_name,
)
from finetune_operator.kube.client import KubeClient, KubeError
from finetune_operator.reconcile import (
    Decision,
    JobObservation,
    Observed,
    PodObservation,
    StorageObservation,
    invalid_spec,
    reconcile,
    storage_reads,
)
from finetune_operator.settings import Settings
from finetune_operator.storage.s3 import S3Target, delete_prefix, observe_run

GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"
MANAGED = {"app.kubernetes.io/managed-by": MANAGER}
SECRET_TTL = 60.0
CATCH_UP_SECONDS = 5.0
STEPS_AT_ONCE = 32  # a burst of new jobs queues here, before anything is built for them
_workers: dict[tuple[str, str], _Worker] = {}
INDEXES = ("child_jobs", "child_pods", "child_configs", "child_services")
LOG = logging.getLogger("finetune_operator")


class _JobLog(logging.LoggerAdapter[logging.Logger]):
    """A job's log lines, prefixed `[namespace/name]` as Kopf prefixes them. Kopf's own object logger keeps
    the whole body of the event it was made for (to post warnings as Events): held by a parked loop, that
    is about 20 KB of decoded JSON per job. Transient warnings go to the log only; the story is told by
    the transition Events and conditions."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{(self.extra or {}).get('ref')}] {msg}", kwargs


def _wake(namespace: str | None, name: str | None) -> None:
    worker = _workers.get((namespace or "", name or ""))
    if worker is not None:
        worker.wake.set()


# --- start-up -------------------------------------------------------------------------------------


class _GenerationDiffBase(kopf.AnnotationsDiffBaseStorage):
    """Kopf builds an object's "essence" on every watch event to diff it for change handlers: a deep copy
    of the whole body, managedFields and status included, then copied twice more. This operator has no
    change handlers (its loops re-read the newest body; deletion needs no diff), so the essence is only
    the generation: the same decisions for Kopf, at a fraction of the CPU under thousands of objects."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None
    ) -> kopf.BodyEssence:
        return {"spec": {"generation": body.metadata.get("generation")}}


@kopf.on.startup()
async def configure(*, settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="finetune.dev")
    settings.persistence.diffbase_storage = _GenerationDiffBase(
        prefix="finetune.dev", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # our own events tell the story; Kopf's would repeat it
    settings.watching.server_timeout = 300
    settings.queueing.idle_timeout = 0.5  # Kopf's per-object workers hold the last raw body while idle
    memo.settings = Settings.from_env()
    memo.kube = KubeClient.connect()
    memo.secrets = {}
    memo.steps = asyncio.Semaphore(STEPS_AT_ONCE)


@kopf.on.cleanup()
async def close(*, memo: kopf.Memo, **_: Any) -> None:
    tasks = [w.task for w in _workers.values() if w.task is not None]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await memo.kube.close()


# --- indexes: the operator's view of its children --------------------------------------------------


def _job_observation(body: kopf.Body) -> JobObservation:
    status = body.get("status", {})
    outcome, reason, message = None, "", ""
    for cond in status.get("conditions", []):
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            outcome, reason, message = cond["type"], cond.get("reason", ""), cond.get("message", "")
    attempt = body.metadata.labels.get(ATTEMPT_LABEL)
    start = status.get("startTime")
    return JobObservation(
        name=body.metadata.name or "",
        attempt=int(attempt) if attempt and attempt.isdigit() else None,
        active=int(status.get("active", 0)),
        suspended=bool(body.get("spec", {}).get("suspend")),
        outcome=outcome,
        reason=reason,
        message=message,
        start_time=dt.datetime.fromisoformat(start) if start else None,
    )


def _pod_observation(body: kopf.Body) -> PodObservation:
    status = body.get("status", {})
    waiting_reason = waiting_message = unschedulable = ""
    for container in status.get("containerStatuses", []) or []:
        waiting = (container.get("state") or {}).get("waiting")
        if waiting:
            waiting_reason, waiting_message = waiting.get("reason", ""), waiting.get("message", "")
    for cond in status.get("conditions", []) or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            unschedulable = cond.get("message", "") or cond.get("reason", "")
    return PodObservation(
        name=body.metadata.name or "",
        job_name=body.metadata.labels.get("job-name", ""),
        phase=status.get("phase", "Pending"),
        waiting_reason=waiting_reason,
        waiting_message=waiting_message,
        unschedulable_message=unschedulable,
    )


@kopf.index("batch", "v1", "jobs", labels=MANAGED)
def child_jobs(*, namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, labels[JOB_LABEL]): _job_observation(body)}


@kopf.index("", "v1", "pods", labels={JOB_LABEL: kopf.PRESENT})
def child_pods(*, namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, labels[JOB_LABEL]): _pod_observation(body)}


@kopf.index("", "v1", "configmaps", labels=MANAGED)
def child_configs(*, namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, labels[JOB_LABEL]): body.get("data", {}).get("trainer.json")}


@kopf.index("", "v1", "services", labels=MANAGED)
def child_services(*, namespace: str | None, labels: kopf.Labels, **_: Any) -> dict[Any, Any]:
    return {(namespace, labels[JOB_LABEL]): True}


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
@kopf.on.event("", "v1", "pods", labels={JOB_LABEL: kopf.PRESENT})
def child_changed(*, namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    _wake(namespace, labels.get(JOB_LABEL))


# --- the loop -------------------------------------------------------------------------------------


async def _s3_target(memo: kopf.Memo, job: FineTuneJob) -> S3Target:
    storage = job.spec.storage
    access = secret = None
    ref = storage.credentials_secret_ref
    if ref is not None:
        key = (job.metadata.namespace, ref.name)
        cached = memo.secrets.get(key)
        if cached is None or time.monotonic() - cached[0] > SECRET_TTL:
            body = await memo.kube.get("Secret", job.metadata.namespace or "", ref.name)
            cached = (time.monotonic(), (body or {}).get("data", {}))
            memo.secrets[key] = cached
        data = cached[1]
        access = (
            base64.b64decode(data[ref.access_key_id_key]).decode() if ref.access_key_id_key in data else None
        )
        secret = (
            base64.b64decode(data[ref.secret_access_key_key]).decode()
            if ref.secret_access_key_key in data
            else None
        )
    return S3Target(
        storage.endpoint,
        storage.region,
        access,
        secret,
        storage.force_path_style,
        memo.settings.s3_timeout_seconds,
    )


async def _gate(job: FineTuneJob, kube: KubeClient) -> tuple[EvalGate | None, str | None]:
    """The EvalGate the job references, or why there is none usable."""
    ref = job.spec.eval_gate_ref
    if ref is None:
        return None, None
    namespace = job.metadata.namespace or ""
    body = await kube.get("EvalGate", namespace, ref.name)
    if body is None:
        return None, f"EvalGate {ref.name} not found in namespace {namespace}"
    try:
        return EvalGate.model_validate(body), None
    except ValidationError as err:
        first = err.errors()[0]
        return None, f"EvalGate {ref.name} is invalid: {'.'.join(map(str, first['loc']))}: {first['msg']}"


async def _observe(job: FineTuneJob, memo: kopf.Memo, indexes: dict[str, kopf.Index[Any, Any]]) -> Observed:
    key = (job.metadata.namespace, job.metadata.name)
    jobs: list[JobObservation] = list(indexes["child_jobs"].get(key, []))
    name = job.metadata.name
    training = tuple(j for j in jobs if j.attempt is not None)
    gate = problem = None
    if job.spec.eval_gate_ref is not None and any(j.outcome == "Complete" for j in training):
        gate, problem = await _gate(job, memo.kube)  # only once there is a checkpoint to judge
    observed = Observed(
        job=job,
        now=dt.datetime.now(dt.UTC),
        validation=next((j for j in jobs if j.name == validation_job_name(name)), None),
        training=training,
        pods=tuple(indexes["child_pods"].get(key, [])),
        config_data=next(iter(indexes["child_configs"].get(key, [])), None),
        service=bool(list(indexes["child_services"].get(key, []))),
        evaluation=next((j for j in jobs if j.name == evaluation_job_name(name)), None),
        promotion=next((j for j in jobs if j.name == promotion_job_name(name)), None),
        gate=gate,
        gate_problem=problem,
    )
    reads = storage_reads(observed)
    if not reads:
        return observed
    try:
        target = await _s3_target(memo, job)
    except KubeError as err:
        return Observed(**{**observed.__dict__, "storage": StorageObservation(error=f"credentials: {err}")})
    run = job.status.run_id or run_id(job)
    storage = await asyncio.to_thread(
        observe_run,
        target,
        staging_uri(job, run),
        report=reads.report,
        progress=reads.progress,
        checkpoints=reads.checkpoints,
        eval_report=reads.eval_report,
        version_uri=version_uri(job, run) if reads.manifest else None,
    )
    return Observed(**{**observed.__dict__, "storage": storage})


@dataclass
class _Expected:
    """What the last actions wrote, until the watches show it (read-your-writes for the next loop)."""

    status: dict[str, Any] | None = None
    children: tuple[str, ...] = ()

    def seen(self, body: bytes, jobs: list[JobObservation]) -> bool:
        status_ok = self.status is None or _status_dump(body) == self.status
        names = {j.name for j in jobs}
        return status_ok and all(name in names for name in self.children)


def _status_dump(essence: bytes) -> dict[str, Any] | None:
    try:
        return FineTuneJobStatus.model_validate(json.loads(essence)["status"]).dump()
    except ValidationError:
        return None


async def _act(decision: Decision, job: FineTuneJob, kube: KubeClient, logger: _JobLog) -> _Expected:
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
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "name": job.metadata.name,
        "namespace": namespace,
        "uid": job.metadata.uid,
    }
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    for event in decision.events:
        try:
            await kube.event(involved, event.type, event.reason, event.message, now)
        except KubeError as err:  # events are best effort; the status below still tells the story
            logger.warning(f"could not record event {event.reason}: {err}")
    status = decision.status.dump()
    written = None
    if status != job.status.dump():
        await kube.patch_status(namespace, job.metadata.name, status)
        written = status
    jobs = tuple(m["metadata"]["name"] for m in decision.create if m["kind"] == "Job")
    return _Expected(written, jobs)


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def _essence(body: kopf.Body) -> bytes:
    """What reconcile reads of an object (not managedFields, not kubectl's copy of the whole manifest),
    as compact JSON: parked loops keep this between steps, and a 1.5 KB string weighs a tenth of the
    same dicts. Each step validates it afresh (about 0.1 ms)."""
    meta = body.metadata
    annotations = {k: v for k, v in meta.annotations.items() if k != LAST_APPLIED}
    essence = {
        "metadata": {
            "name": meta.name,
            "namespace": meta.namespace,
            "uid": meta.uid,
            "generation": meta.get("generation"),
            "annotations": annotations,
        },
        "spec": dict(body.spec),
        "status": dict(body.status),
    }
    return json.dumps(essence, separators=(",", ":")).encode()


def _load(essence: bytes) -> tuple[FineTuneJob, str | None]:
    raw = json.loads(essence)
    try:
        return FineTuneJob.model_validate(raw), None
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()[:5])
        status = FineTuneJobStatus.model_validate(raw["status"]) if raw["status"] else FineTuneJobStatus()
        meta = ObjectMeta.model_validate(raw["metadata"])
        # reconcile reads only metadata and status of a job whose spec is refused
        fields: dict[str, Any] = {"metadata": meta, "status": status}
        return FineTuneJob.model_construct(**fields), problems


async def _catch_up(
    expected: _Expected, worker: _Worker, jobs: kopf.Index[Any, Any], key: tuple[str, str]
) -> None:
    """Wait (briefly) until the watches deliver our own last writes, so reconcile never acts on a view
    older than what it just did. Each write comes back as a watch event that wakes the worker; proceeds
    anyway after CATCH_UP_SECONDS (creates are idempotent)."""
    deadline = time.monotonic() + CATCH_UP_SECONDS
    while not expected.seen(worker.body, list(jobs.get(key, []))):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        worker.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(worker.wake.wait(), timeout=remaining)


@dataclass
class _Worker:
    """The reconcile loop of one FineTuneJob, fed the newest body by the watch (trimmed: see _essence)."""

    body: bytes
    wake: asyncio.Event
    task: asyncio.Task[None] | None = None


async def _step(
    worker: _Worker,
    memo: kopf.Memo,
    logger: _JobLog,
    indexes: dict[str, kopf.Index[Any, Any]],
    backoff: float,
) -> tuple[float | None, _Expected]:
    """One observe -> reconcile -> act. Its own frame, so that the models and manifests it builds are
    freed before the loop sleeps: thousands of parked loops hold only what the next step needs."""
    job, problem = _load(worker.body)
    try:
        if problem is not None:
            decision = invalid_spec(job, problem, dt.datetime.now(dt.UTC))
        else:
            decision = reconcile(await _observe(job, memo, indexes), memo.settings)
        return decision.requeue_after, await _act(decision, job, memo.kube, logger)
    except KubeError as err:
        if err.status == 422 and problem is None:  # a child the spec makes invalid: the user must act
            failed = invalid_spec(
                job, f"the API server refused a child object: {err.message}", dt.datetime.now(dt.UTC)
            )
            return None, await _act(failed, job, memo.kube, logger)
        logger.warning(f"reconcile failed, retrying in {backoff:.0f}s: {err}")
        return -backoff, _Expected()  # negative: a retry after an error


async def _lifecycle(
    worker: _Worker,
    key: tuple[str, str],
    memo: kopf.Memo,
    logger: _JobLog,
    indexes: dict[str, kopf.Index[Any, Any]],
) -> None:
    """Reconcile one FineTuneJob until it reaches a terminal phase; cancelled when it is deleted."""
    backoff = 1.0
    expected = _Expected()
    try:
        while True:
            await _catch_up(expected, worker, indexes["child_jobs"], key)
            worker.wake.clear()
            async with memo.steps:
                requeue_after, expected = await _step(worker, memo, logger, indexes, backoff)
            if requeue_after is None:
                return  # terminal: nothing more will change
            if requeue_after < 0:
                requeue_after, backoff = -requeue_after, min(backoff * 2, 60.0)
            else:
                backoff = 1.0
            timer = asyncio.get_running_loop().call_later(requeue_after, worker.wake.set)
            try:  # a timer, not wait_for: a parked loop is one task, not two
                await worker.wake.wait()
            finally:
                timer.cancel()
    finally:
        if _workers.get(key) is worker:
            del _workers[key]


@kopf.on.event(GROUP, VERSION, PLURAL)
async def job_changed(
    *,
    type: str,
    body: kopf.Body,
    namespace: str | None,
    name: str,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    """Start, feed or stop the object's reconcile loop. Kopf's daemons would do the same but put a
    finalizer on every object; this way only objects whose deletion needs work get one."""
    key = (namespace or "", name)
    worker = _workers.get(key)
    if type == "DELETED" or body.metadata.get("deletionTimestamp"):
        if worker is not None and worker.task is not None:
            worker.task.cancel()
        return
    if worker is not None:
        worker.body = _essence(body)
        worker.wake.set()
        return
    worker = _Worker(body=_essence(body), wake=asyncio.Event())
    indexes = {index: kwargs[index] for index in INDEXES}
    logger = _JobLog(LOG, {"ref": f"{namespace}/{name}"})
    # A fresh context: a task copies its creator's, and Kopf's context variables hold this event's cause,
    # whole body included, which the loop would otherwise keep alive for the job's lifetime.
    worker.task = asyncio.create_task(
        _lifecycle(worker, key, memo, logger, indexes), context=contextvars.Context()
    )
    _workers[key] = worker


# --- deletion -------------------------------------------------------------------------------------


def _cleans_up(spec: kopf.Spec, **_: Any) -> bool:
    return bool(spec.get("runPolicy", {}).get("artifactCleanup") == "Delete")


@kopf.on.delete(GROUP, VERSION, PLURAL, when=_cleans_up)
async def delete(
    *,
    body: kopf.Body,
    namespace: str | None,
    name: str,
    memo: kopf.Memo,
    runtime: dt.timedelta,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    """Only with runPolicy.artifactCleanup Delete (so only those objects carry the finalizer): stop the
    Jobs now and delete the run's staging prefix. Otherwise owner references let the garbage collector
    remove the children, and nothing blocks deletion."""
    child_jobs: kopf.Index[Any, Any] = kwargs["child_jobs"]
    for observation in list(child_jobs.get((namespace, name), [])):
        await memo.kube.delete("Job", namespace or "", observation.name)
    job, problem = _load(_essence(body))
    if problem is not None:
        return
    staging = staging_uri(job, job.status.run_id or run_id(job))
    output = job.spec.output_uri or ""
    if output and (output.startswith(staging) or staging.startswith(output)):
        kopf.event(
            body, type="Warning", reason="CleanupSkipped", message=f"{staging} overlaps outputUri {output}"
        )
        return
    try:
        target = await _s3_target(memo, job)
        deleted = await asyncio.to_thread(delete_prefix, target, staging)
    except Exception as err:
        if runtime.total_seconds() < memo.settings.cleanup_deadline_seconds:
            raise kopf.TemporaryError(f"cleaning {staging} failed: {err}", delay=15) from err
        message = f"gave up deleting {staging} after {runtime.total_seconds():.0f}s: {err}; delete it by hand"
        logger.warning(message)
        kopf.event(body, type="Warning", reason="CleanupAbandoned", message=message)
        return
    logger.info(f"deleted {deleted} staging objects under {staging}")
