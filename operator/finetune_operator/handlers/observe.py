"""Observing a FineTuneJob: its children from the watch-fed indexes (no API calls), its EvalGate and its
Secret from the API (the Secret cached for SECRET_TTL), whether the Secrets and ServiceAccount it names
exist (metadata only; a found one is trusted for SECRET_TTL, a missing one looked up on every step), and
from S3 only what reconcile needs now.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from finetune_api.admission import POLICIES, POLICY_FILE
from finetune_api.plan import RunPlan
from finetune_api.v1alpha1 import FineTuneJob, Phase
from finetune_operator.builders.names import evaluation_job_name, promotion_job_name, validation_job_name
from finetune_operator.handlers import parse
from finetune_operator.kube.client import KubeClient, KubeError
from finetune_operator.observed import JobObservation, JobOutcome, Observed, Reference, StorageObservation
from finetune_operator.reconcile import storage_reads
from finetune_operator.reconcile.references import named
from finetune_operator.settings import Settings
from finetune_operator.storage.s3 import S3Target, observe_run

SECRET_TTL = 60.0
POLICY_TTL = 60.0  # how long the approval policies' presence is trusted before it is read again
# The watch-fed indexes (handlers.registrations), by name: (namespace, job name) -> observations.
INDEXES = ("child_jobs", "child_pods", "child_configs", "child_services")
Indexes = Mapping[str, Mapping[Any, Any]]


async def policy_problem(kube: KubeClient, names: tuple[str, ...], what: str) -> str | None:
    """Why the admission policies `names` (each with its binding) cannot be relied on: one is missing or
    cannot be read; None when all are installed."""
    problem = None
    try:
        for name in names:
            for kind in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
                if await kube.get(kind, "", name) is None:
                    problem = problem or f"{kind} {name} is not installed"
    except KubeError as err:
        problem = f"cannot read the {what} policies: {err}"
    return problem


@dataclass
class Observer:
    """What one operator process needs to observe jobs: its API client, settings and Secret cache."""

    kube: KubeClient
    settings: Settings
    secrets: dict[tuple[str, str], tuple[float, dict[str, str]]] = field(default_factory=dict)
    policy: tuple[float, str | None] | None = None  # (read at, problem) of the approval policies
    found: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (kind, ns, name) -> seen at

    async def references(self, job: FineTuneJob) -> tuple[Reference, ...]:
        """The Secrets and ServiceAccount the job names, each with whether it exists."""
        namespace = job.metadata.namespace or ""
        looked: list[Reference] = []
        for ref in named(job, self.settings):
            key = (ref.kind, namespace, ref.name)
            seen = self.found.get(key)
            exists = True
            if seen is None or time.monotonic() - seen > SECRET_TTL:
                exists = await self.kube.exists(ref.kind, namespace, ref.name)
                if exists:
                    self.found[key] = time.monotonic()
                else:
                    self.found.pop(key, None)
            looked.append(replace(ref, found=exists))
        return tuple(looked)

    async def approval_policy_problem(self) -> str | None:
        """Why approvals cannot be trusted now: an approval policy or its binding is missing (or cannot be
        read); None when all are installed. Cached for POLICY_TTL."""
        if self.policy is not None and time.monotonic() - self.policy[0] < POLICY_TTL:
            return self.policy[1]
        problem = await policy_problem(self.kube, POLICIES, "approval")
        if problem is not None:
            problem += f" (apply crds/{POLICY_FILE}: without it anyone could approve under any name)"
        self.policy = (time.monotonic(), problem)
        return problem

    async def s3_target(self, job: FineTuneJob) -> S3Target:
        """Where and as whom to read the job's staging: its Secret's keys, or the pod's own identity."""
        storage = job.spec.storage
        access = secret = None
        ref = storage.credentials_secret_ref
        if ref is not None:
            namespace = job.metadata.namespace or ""
            key = (namespace, ref.name)
            cached = self.secrets.get(key)
            if cached is None or time.monotonic() - cached[0] > SECRET_TTL:
                body = await self.kube.get("Secret", namespace, ref.name)
                cached = (time.monotonic(), (body or {}).get("data", {}))
                if body is not None:  # a missing Secret is read again as soon as it is needed
                    self.secrets[key] = cached
            access = parse.secret_value(cached[1], ref.access_key_id_key)
            secret = parse.secret_value(cached[1], ref.secret_access_key_key)
        return S3Target(
            storage.endpoint,
            storage.region,
            access,
            secret,
            storage.force_path_style,
            self.settings.s3_timeout_seconds,
        )

    async def observe(self, job: FineTuneJob, indexes: Indexes) -> Observed:
        key = (job.metadata.namespace, job.metadata.name)
        jobs: list[JobObservation] = list(indexes["child_jobs"].get(key, []))
        name = job.metadata.name
        training = tuple(j for j in jobs if j.attempt is not None)
        gate = problem = None
        policy_problem: str | None = "not needed yet"
        ref = job.spec.eval_gate_ref
        if ref is not None and any(j.outcome == JobOutcome.COMPLETE for j in training):
            namespace = job.metadata.namespace or ""  # only once there is a checkpoint to judge
            gate, problem = parse.evalgate(
                await self.kube.get("EvalGate", namespace, ref.name), ref.name, namespace
            )
            if gate is None or gate.spec.require_approval:
                policy_problem = await self.approval_policy_problem()
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
            approval_policy_problem=policy_problem,
            references=() if Phase(job.status.phase).terminal else await self.references(job),
        )
        reads = storage_reads(observed)
        if not reads:
            return observed
        try:
            target = await self.s3_target(job)
        except KubeError as err:
            return replace(observed, storage=StorageObservation(error=f"credentials: {err}"))
        plan = RunPlan.of(job)
        storage = await asyncio.to_thread(
            observe_run,
            target,
            plan.layout,
            report=reads.report,
            progress=reads.progress,
            checkpoints=reads.checkpoints,
            eval_report=reads.eval_report,
            manifest_uri=plan.manifest_uri if reads.manifest else None,
        )
        return replace(observed, storage=storage)
