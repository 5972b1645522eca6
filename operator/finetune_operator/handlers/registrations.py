"""The Kopf registrations: start-up and clean-up, the watch-fed indexes of the operator's children, the
events that feed the runtime's loops, and deletion. Thin: each one hands its object to `parse`, the
runtime (`runtime.Runtime`) or storage.

- Indexes keep what the operator created (Jobs, pods, ConfigMaps, Services) in memory, fed by watches,
  reduced to what reconcile needs: observing costs no API calls.
- Deletion: owner references let the garbage collector remove the children. Only with
  runPolicy.artifactCleanup Delete does an object carry a finalizer: it stops the Jobs, removes the run's
  staging prefix, and gives up on S3 after the cleanup deadline rather than block deletion forever.
- Kopf's own bookkeeping lives in `finetune.dev/*` annotations; status holds only declared fields.
- Every FineTuneJob event also refreshes its row in the metrics' job table (phase, method, since when).
- ModelDeployments (`deployments.DeploymentRuntime`): indexes of their model server Deployments and
  HTTPRoute (by the `modeldeployment` label) and of the versions FineTuneJobs promoted for them (by
  `spec.deployment.name`); an event on any of these wakes the deployment's loop. No finalizer: owner
  references let the garbage collector remove the children.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterable
from typing import Any

import kopf

from finetune_api.base import GROUP, VERSION
from finetune_api.errors import DomainError, PermanentError, TemporaryError
from finetune_api.plan import RunPlan
from finetune_api.v1alpha1 import FINETUNEJOB_CRD, MODELDEPLOYMENT_CRD, FineTuneJob, Reason
from finetune_operator.builders.names import DEPLOYMENT_LABEL, FINALIZER, JOB_LABEL, MANAGER
from finetune_operator.builders.workloads import CONFIG_KEY
from finetune_operator.handlers import parse, rollout_parse
from finetune_operator.handlers.deployments import DEPLOYMENT_INDEXES, DeploymentObserver, DeploymentRuntime
from finetune_operator.handlers.observe import INDEXES, Observer
from finetune_operator.handlers.runtime import Runtime
from finetune_operator.kube.client import KubeClient
from finetune_operator.metrics import METRICS, DeploymentRow, JobRow, analysis_names
from finetune_operator.prometheus.client import PrometheusClient
from finetune_operator.settings import Settings
from finetune_operator.storage.s3 import delete_prefix

PLURAL = FINETUNEJOB_CRD.plural
DEPLOYMENTS = MODELDEPLOYMENT_CRD.plural
MANAGED = {"app.kubernetes.io/managed-by": MANAGER}
SERVING: dict[str, Any] = {**MANAGED, DEPLOYMENT_LABEL: kopf.PRESENT}
CLEANUP_RETRY_SECONDS = 15


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
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = _GenerationDiffBase(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # our own events tell the story; Kopf's would repeat it
    settings.watching.server_timeout = 300
    settings.queueing.idle_timeout = 0.5  # Kopf's per-object workers hold the last raw body while idle
    kube = KubeClient.connect()
    settings_ = Settings.from_env()
    memo.runtime = Runtime(kube, Observer(kube, settings_))
    observer = DeploymentObserver(kube, PrometheusClient.connect(), settings_)
    memo.deployments = DeploymentRuntime(kube, observer)


@kopf.on.cleanup()
async def close(*, memo: kopf.Memo, **_: Any) -> None:
    await memo.runtime.close()
    await memo.deployments.close()
    await memo.deployments.observer.prometheus.close()
    await memo.runtime.kube.close()


# --- indexes: the operator's view of its children --------------------------------------------------


@kopf.index("batch", "v1", "jobs", labels={**MANAGED, JOB_LABEL: kopf.PRESENT})
def child_jobs(*, namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, labels[JOB_LABEL]): parse.job_observation(body)}


@kopf.index("", "v1", "pods", labels={JOB_LABEL: kopf.PRESENT})
def child_pods(*, namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, labels[JOB_LABEL]): parse.pod_observation(body)}


@kopf.index("", "v1", "configmaps", labels={**MANAGED, JOB_LABEL: kopf.PRESENT})
def child_configs(*, namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, labels[JOB_LABEL]): body.get("data", {}).get(CONFIG_KEY)}


@kopf.index("", "v1", "services", labels={**MANAGED, JOB_LABEL: kopf.PRESENT})
def child_services(*, namespace: str | None, labels: kopf.Labels, **_: Any) -> dict[Any, Any]:
    return {(namespace, labels[JOB_LABEL]): True}


@kopf.index("apps", "v1", "deployments", labels=SERVING)
def model_servers(*, namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    server = rollout_parse.server_observation(body)
    return {} if server is None else {(namespace, labels[DEPLOYMENT_LABEL]): server}


@kopf.index("gateway.networking.k8s.io", "v1", "httproutes", labels=SERVING)
def model_routes(*, namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, labels[DEPLOYMENT_LABEL]): rollout_parse.route_observation(body)}


@kopf.index(GROUP, VERSION, PLURAL)
def promoted_versions(*, namespace: str | None, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """The version a succeeded FineTuneJob promoted, under the ModelDeployment it names ({} otherwise:
    an empty result also removes what the job indexed before)."""
    deployment = ((body.get("spec") or {}).get("deployment") or {}).get("name")
    version = rollout_parse.promoted_version(body) if deployment else None
    return {} if version is None else {(namespace, deployment): version}


@kopf.on.event("apps", "v1", "deployments", labels=SERVING)
@kopf.on.event("gateway.networking.k8s.io", "v1", "httproutes", labels=SERVING)
def serving_changed(*, namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    memo.deployments.wake(namespace, labels.get(DEPLOYMENT_LABEL))


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
@kopf.on.event("", "v1", "pods", labels={JOB_LABEL: kopf.PRESENT})
def child_changed(*, namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    memo.runtime.wake(namespace, labels.get(JOB_LABEL))


@kopf.on.event(GROUP, VERSION, PLURAL)
async def job_changed(
    *, type: str, body: kopf.Body, namespace: str | None, name: str, memo: kopf.Memo, **kwargs: Any
) -> None:
    """Start, feed or stop the object's reconcile loop. Kopf's daemons would do the same but put a
    finalizer on every object; this way only objects whose deletion needs work get one."""
    runtime: Runtime = memo.runtime
    deployment = ((body.get("spec") or {}).get("deployment") or {}).get("name")
    if deployment:  # its promoted version (or its link) may have changed
        memo.deployments.wake(namespace, deployment)
    if type == "DELETED":
        METRICS.table.update(namespace or "", name, None)
    elif METRICS.table.update(namespace or "", name, row := JobRow.of(body)):
        gate = (body.get("spec") or {}).get("evalGateRef") or {}
        METRICS.seen(namespace or "", row.method, gate.get("name"))
    if type == "DELETED" or body.metadata.get("deletionTimestamp"):
        runtime.stop(namespace or "", name)
        return
    runtime.feed(namespace or "", name, parse.essence(body), {index: kwargs[index] for index in INDEXES})


@kopf.on.event(GROUP, VERSION, DEPLOYMENTS)
async def deployment_changed(
    *, type: str, body: kopf.Body, namespace: str | None, name: str, memo: kopf.Memo, **kwargs: Any
) -> None:
    """Start, feed or stop a ModelDeployment's loop; keep its row of the stage and weight gauges."""
    deployments: DeploymentRuntime = memo.deployments
    if type == "DELETED" or body.metadata.get("deletionTimestamp"):
        METRICS.deployments.update(namespace or "", name, None)
        deployments.stop(namespace or "", name)
        return
    if METRICS.deployments.update(namespace or "", name, DeploymentRow.of(body)):
        METRICS.deployment_seen(namespace or "", analysis_names(body))
    indexes = {index: kwargs[index] for index in DEPLOYMENT_INDEXES}
    deployments.feed(namespace or "", name, parse.essence(body), indexes)


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
    operator: Runtime = memo.runtime
    for observation in list(child_jobs.get((namespace, name), [])):
        await operator.kube.delete("Job", namespace or "", observation.name)
    job, problem = parse.load(parse.essence(body))
    if problem is not None:
        return
    try:
        deleted, staging = await _delete_staging(job, operator, runtime)
    except TemporaryError as err:
        raise kopf.TemporaryError(err.message, delay=err.delay) from err
    except DomainError as err:  # given up: say so, and let the object go
        logger.warning(err.message)
        kopf.event(body, type="Warning", reason=err.reason, message=err.message)
        return
    logger.info(f"deleted {deleted} staging objects under {staging}")


async def _delete_staging(job: FineTuneJob, operator: Runtime, runtime: dt.timedelta) -> tuple[int, str]:
    """Delete the run's staging prefix: a TemporaryError while S3 fails within the cleanup deadline, a
    PermanentError when the prefix must not or could not be deleted."""
    staging = RunPlan.of(job).layout.root
    output = job.spec.output_uri or ""
    if output and (output.startswith(staging) or staging.startswith(output)):
        raise PermanentError(Reason.CLEANUP_SKIPPED, f"{staging} overlaps outputUri {output}")
    try:
        target = await operator.observer.s3_target(job)
        return await asyncio.to_thread(delete_prefix, target, staging), staging
    except Exception as err:
        elapsed = runtime.total_seconds()
        if elapsed < operator.observer.settings.cleanup_deadline_seconds:
            raise TemporaryError(
                Reason.CLEANUP_ABANDONED, f"cleaning {staging} failed: {err}", delay=CLEANUP_RETRY_SECONDS
            ) from err
        message = f"gave up deleting {staging} after {elapsed:.0f}s: {err}; delete it by hand"
        raise PermanentError(Reason.CLEANUP_ABANDONED, message) from err
