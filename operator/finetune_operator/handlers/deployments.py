"""The ModelDeployment runtime: one reconcile loop per ModelDeployment (`loops.Loops`: wake on events,
sleep, back off, report repeated failures), each step observe -> reads -> Prometheus -> decide -> act.

- Observe: the body (a spec the model refuses is `spec_error`), the model servers and the route from the
  watch-fed indexes, the promoted versions of the FineTuneJobs naming the deployment (an index too), the
  manual action in the annotations and whether the admission policy that authenticates its name is
  installed (read only when an action is set, cached for POLICY_TTL). No API call per step otherwise.
- Prometheus: `reads(observed)` says what the decision needs; the queries run at once against
  `spec.prometheus.address` and fill the observation.
- Act, in this order: apply manifests (server-side apply), delete objects (absent is fine), write the
  FineTuneJobs' rollout links, record events, remove the consumed action annotations, and last the status
  (only if it changed): status is the commit point, whatever it says has already happened.
- A deployment lives on: its loop never ends by itself (a decision without a requeue sleeps `resync`),
  only when the object is deleted. Owner references let the garbage collector remove the children.

The decision functions are `finetune_operator.reconcile.rollout`'s (`reads`, `reconcile_deployment`) unless
injected (tests).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from finetune_api.admission import ROLLOUT_POLICIES, ROLLOUT_POLICY_FILE
from finetune_api.base import API_VERSION
from finetune_api.v1alpha1 import ModelDeployment, ModelDeploymentStatus
from finetune_api.v1alpha1.modeldeployment import (
    ROLLOUT_ACTION_ANNOTATION,
    ROLLOUT_ACTION_BY_ANNOTATION,
    ROLLOUT_ANNOTATIONS,
)
from finetune_api.v1alpha1.modeldeployment_status import DeploymentConditionType, DeploymentReason
from finetune_operator.handlers import rollout_parse
from finetune_operator.handlers.loops import (
    CATCH_UP_SECONDS,
    FAILURES_TO_REPORT,
    MAX_BACKOFF,
    STEPS_AT_ONCE,
    Indexes,
    Key,
    Loops,
    ObjectLog,
    Worker,
)
from finetune_operator.handlers.loops import now as _now
from finetune_operator.handlers.observe import POLICY_TTL, policy_problem
from finetune_operator.kube.client import KubeClient, KubeError
from finetune_operator.metrics import METRICS, Metrics
from finetune_operator.observed_deployment import (
    DeploymentDecision,
    DeploymentObserved,
    PrometheusReads,
    PromotedVersion,
    RouteObservation,
    ServerObservation,
)
from finetune_operator.prometheus.client import PrometheusClient
from finetune_operator.reconcile import rollout
from finetune_operator.reconcile import status as st
from finetune_operator.settings import Settings

# The watch-fed indexes (handlers.registrations), by name: (namespace, deployment name) -> observations.
DEPLOYMENT_INDEXES = ("model_servers", "model_routes", "promoted_versions")
ReadsFn = Callable[[DeploymentObserved], PrometheusReads]
DecideFn = Callable[[DeploymentObserved, Settings], DeploymentDecision]


def observed_children(
    indexes: Indexes, key: Key
) -> tuple[dict[Any, ServerObservation], RouteObservation | None, tuple[PromotedVersion, ...]]:
    """The deployment's servers by variant, its route, and the versions promoted for it, from the indexes."""
    servers = {s.variant: s for s in indexes["model_servers"].get(key, []) if s is not None}
    route = next(iter(indexes["model_routes"].get(key, [])), None)
    versions = tuple(
        sorted(
            (v for v in indexes["promoted_versions"].get(key, []) if v is not None),
            key=lambda v: (v.promoted_at is None, v.promoted_at, v.job),
        )
    )
    return servers, route, versions


@dataclass
class DeploymentObserver:
    """What one operator process needs to observe ModelDeployments."""

    kube: KubeClient
    prometheus: PrometheusClient
    settings: Settings
    policy: tuple[float, str | None] | None = None  # (read at, problem) of the rollout policy

    async def action_policy_problem(self) -> str | None:
        """Why rollout actions cannot be trusted now (their admission policy or binding is missing); None
        when installed. Cached for POLICY_TTL."""
        if self.policy is not None and time.monotonic() - self.policy[0] < POLICY_TTL:
            return self.policy[1]
        problem = await policy_problem(self.kube, ROLLOUT_POLICIES, "rollout")
        if problem is not None:
            problem += f" (apply crds/{ROLLOUT_POLICY_FILE}: without it anyone could act under any name)"
        self.policy = (time.monotonic(), problem)
        return problem

    async def observe(
        self, deployment: ModelDeployment, indexes: Indexes, spec_error: str | None
    ) -> DeploymentObserved:
        key = (deployment.metadata.namespace or "", deployment.metadata.name)
        servers, route, versions = observed_children(indexes, key)
        annotations = deployment.metadata.annotations or {}
        action = annotations.get(ROLLOUT_ACTION_ANNOTATION)
        problem = None
        if action is not None or ROLLOUT_ACTION_BY_ANNOTATION in annotations:
            problem = await self.action_policy_problem()
        return DeploymentObserved(
            deployment=deployment,
            now=_now(),
            servers=servers,
            route=route,
            versions=versions,
            action=action,
            action_by=annotations.get(ROLLOUT_ACTION_BY_ANNOTATION),
            action_problem=problem,
            spec_error=spec_error,
        )

    async def measure(self, observed: DeploymentObserved, reads: PrometheusReads) -> DeploymentObserved:
        """The observation with what Prometheus answered to `reads` (unchanged when nothing is asked)."""
        if not reads:
            return observed
        address = observed.deployment.spec.prometheus.address
        shadow, analysis, error = await self.prometheus.read(address, reads)
        return replace(observed, shadow=shadow, analysis=analysis, prometheus_error=error)


@dataclass
class Written:
    """What the last actions wrote, until the watches show it (read-your-writes for the next step)."""

    status: dict[str, Any] | None = None
    cleared_action: bool = False

    def seen(self, worker: Worker, key: Key) -> bool:
        status_ok = self.status is None or rollout_parse.status_of(worker.body) == self.status
        annotations = rollout_parse.annotations_of(worker.body)
        cleared = not self.cleared_action or not any(k in annotations for k in ROLLOUT_ANNOTATIONS)
        return status_ok and cleared


def involved(deployment: ModelDeployment) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelDeployment",
        "name": deployment.metadata.name,
        "namespace": deployment.metadata.namespace or "",
        "uid": deployment.metadata.uid,
    }


async def act(
    decision: DeploymentDecision,
    deployment: ModelDeployment,
    kube: KubeClient,
    logger: ObjectLog,
    metrics: Metrics = METRICS,
) -> Written:
    """Children, then the jobs' links, events, the consumed action, and the status last."""
    namespace = deployment.metadata.namespace or ""
    for manifest in decision.apply:
        await kube.apply(namespace, manifest)
    for kind, name in decision.delete:
        await kube.delete(kind, namespace, name)
    for job, link in decision.job_links.items():
        await kube.patch_status(namespace, job, {"rollout": link.dump()}, kind="FineTuneJob")
    stamp = _now().isoformat(timespec="seconds").replace("+00:00", "Z")
    for event in decision.events:
        try:
            await kube.event(involved(deployment), event.type, event.reason, event.message, stamp)
        except KubeError as err:  # events are best effort; the status below still tells the story
            logger.warning(f"could not record event {event.reason}: {err}")
    if decision.clear_action:
        await kube.remove_annotations(
            "ModelDeployment",
            namespace,
            deployment.metadata.name,
            ROLLOUT_ANNOTATIONS,
            resource_version=deployment.metadata.resource_version,
        )
    status = decision.status.dump()
    written = None
    old = deployment.status.dump()
    if status != old:
        # a merge patch keeps what it does not name: a field the new status dropped (the candidate after a
        # promotion) is removed explicitly
        patch = {**status, **{key: None for key in old if key not in status}}
        await kube.patch_status(namespace, deployment.metadata.name, patch, kind="ModelDeployment")
        metrics.record_deployment(namespace, deployment.status, decision.status)
        written = status
    return Written(written, decision.clear_action)


def reconcile_error(
    status: ModelDeploymentStatus, value: str, reason: str, message: str, generation: int | None
) -> ModelDeploymentStatus:
    """`status` with its ReconcileError condition set (a copy)."""
    status = status.model_copy(deep=True)
    status.conditions = st.set_condition(
        status.conditions,
        DeploymentConditionType.RECONCILE_ERROR,
        "True" if value == "True" else "False",
        reason,
        message,
        now=_now(),
        generation=generation,
    )
    return status


class DeploymentRuntime(Loops):
    """Every ModelDeployment's loop in one operator process, keyed by (namespace, name)."""

    def __init__(
        self,
        kube: KubeClient,
        observer: DeploymentObserver,
        *,
        reads_fn: ReadsFn | None = None,
        reconcile_fn: DecideFn | None = None,
        steps_at_once: int = STEPS_AT_ONCE,
        catch_up_seconds: float = CATCH_UP_SECONDS,
        metrics: Metrics = METRICS,
    ) -> None:
        super().__init__(metrics=metrics, steps_at_once=steps_at_once, catch_up_seconds=catch_up_seconds)
        self.kube = kube
        self.observer = observer
        self.reads_fn = reads_fn
        self.reconcile_fn = reconcile_fn
        metrics.deployment_loops.set_function(lambda: len(self.workers))

    def functions(self) -> tuple[ReadsFn, DecideFn]:
        """The injected decision functions, else the rollout reconcile's."""
        return self.reads_fn or rollout.reads, self.reconcile_fn or rollout.reconcile_deployment

    async def step(self, worker: Worker, key: Key, logger: ObjectLog) -> tuple[float | None, Written]:
        reads, decide = self.functions()
        deployment, problem = rollout_parse.load(worker.body)
        observed = await self.observer.observe(deployment, worker.indexes, problem)
        if problem is None:
            observed = await self.observer.measure(observed, reads(observed))
        decision = decide(observed, self.observer.settings)
        previous = st.condition(decision.status.conditions, DeploymentConditionType.RECONCILE_ERROR)
        if previous is not None and previous.status == "True":
            decision.status = reconcile_error(
                decision.status,
                "False",
                DeploymentReason.RECONCILED,
                "reconciled again after the failures above",
                deployment.metadata.generation,
            )
        written = await act(decision, deployment, self.kube, logger, self.metrics)
        requeue = decision.requeue_after
        return (self.observer.settings.resync_seconds if requeue is None else requeue), written

    async def report(self, worker: Worker, key: Key, logger: ObjectLog, err: Exception) -> None:
        deployment, _ = rollout_parse.load(worker.body)
        status = reconcile_error(
            deployment.status,
            "True",
            DeploymentReason.RECONCILE_FAILING,
            f"reconcile failed {FAILURES_TO_REPORT} or more times in a row, retrying with backoff up to "
            f"{MAX_BACKOFF:.0f}s: {type(err).__name__}: {err}",
            deployment.metadata.generation,
        )
        if status.dump() == deployment.status.dump():
            return
        await self.kube.patch_status(key[0], key[1], status.dump(), kind="ModelDeployment")
