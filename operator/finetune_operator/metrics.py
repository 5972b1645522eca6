"""The operator's Prometheus metrics; docs/metrics.md is their contract (names, labels, meaning).

Counted at the edges, never in reconcile (which stays pure): the runtime records what a status write
changed (`Metrics.record`), the reconcile loop times its steps and counts its errors, the Kubernetes client
counts the requests the API server refused, and the watch keeps `JobTable` current, which Prometheus reads
as gauges at scrape time. No label is named `job` or `instance` (Prometheus would rename it): the
FineTuneJob's label is `finetunejob`.

A counter's series must exist at 0 before its first increment, or `increase()` and `rate()` never see that
first event (Prometheus cannot tell a series born at 1 from one that was always 1), and an alert on the
first data-gate failure in a namespace would never fire. So the series a job can move are created at 0
when the operator first sees the job (`Metrics.seen`: its phase changes, ends and promotion) and when its
gate is read, once training ends (`Metrics.gate_read`: the verdicts and each suite's check).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from finetune_api.serving import DEFAULT_ANALYSIS
from finetune_api.v1alpha1 import (
    ConditionType,
    EvalGate,
    FineTuneJob,
    FineTuneJobStatus,
    Phase,
    Reason,
)
from finetune_api.v1alpha1.conditions import Verdict
from finetune_api.v1alpha1.modeldeployment_status import (
    DeploymentConditionType,
    DeploymentReason,
    ModelDeploymentStatus,
    RolloutStage,
)

PREFIX = "finetune_operator"
# From a second (a validation) to a day (a long training run, a week in a queue is +Inf).
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
WAIT_REASON_CONDITION = ConditionType.PODS_SCHEDULED  # False with Queued, Unschedulable, ImagePullBackOff
_P = Phase
# The phase changes the lifecycle makes (reconcile/), each created at 0 for a newly seen job's namespace
# and method; any other change is still counted, from its first occurrence.
EDGES: tuple[tuple[Phase, Phase], ...] = (
    (_P.PENDING, _P.VALIDATING_DATA),
    (_P.VALIDATING_DATA, _P.PENDING),
    (_P.VALIDATING_DATA, _P.TRAINING),
    (_P.PENDING, _P.TRAINING),
    (_P.TRAINING, _P.PENDING),
    (_P.TRAINING, _P.EVALUATING),
    (_P.TRAINING, _P.SUCCEEDED),
    (_P.EVALUATING, _P.AWAITING_APPROVAL),
    (_P.EVALUATING, _P.PROMOTING),
    (_P.EVALUATING, _P.REJECTED),
    (_P.AWAITING_APPROVAL, _P.PROMOTING),
    (_P.AWAITING_APPROVAL, _P.REJECTED),
    (_P.PROMOTING, _P.SUCCEEDED),
    (_P.PENDING, _P.SUSPENDED),
    (_P.TRAINING, _P.SUSPENDED),
    (_P.SUSPENDED, _P.PENDING),
    (_P.SUSPENDED, _P.TRAINING),
    *((phase, _P.FAILED) for phase in Phase if not phase.terminal),
)
# The reasons a run ends without success (a Succeeded condition False).
END_REASONS: tuple[Reason, ...] = (
    Reason.INVALID_SPEC,
    Reason.EVAL_GATE_NOT_FOUND,
    Reason.DATA_GATES_FAILED,
    Reason.DATA_UNREADABLE,
    Reason.TRAINING_FAILED,
    Reason.RETRY_LIMIT_EXCEEDED,
    Reason.MAX_RUNTIME_EXCEEDED,
    Reason.EVALUATION_FAILED,
    Reason.GATE_FAILED,
    Reason.REJECTED_BY_REVIEWER,
    Reason.PROMOTION_FAILED,
)


@dataclass(frozen=True)
class JobRow:
    """What the gauges need of one FineTuneJob, read from its body."""

    phase: str
    method: str
    entered: float  # Unix seconds: when it entered its phase
    reason: str  # why it waits (the PodsScheduled condition's reason while False), else ""

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> JobRow:
        """From a raw FineTuneJob (a watch event's body): no model validation on the watch's path."""
        status = body.get("status") or {}
        metadata = body.get("metadata") or {}
        since = status.get("lastPhaseTransitionTime") or metadata.get("creationTimestamp")
        reason = ""
        for condition in status.get("conditions") or []:
            if condition.get("type") == WAIT_REASON_CONDITION and condition.get("status") == "False":
                reason = str(condition.get("reason", ""))
        return cls(
            phase=str(status.get("phase") or Phase.PENDING),
            method=str((body.get("spec") or {}).get("method", "")),
            entered=_timestamp(since),
            reason=reason,
        )


# Why a rollout stops (the RolledBack condition's reason); each created at 0 for a newly seen deployment.
ROLLBACK_REASONS: tuple[DeploymentReason, ...] = (
    DeploymentReason.CANDIDATE_NOT_READY,
    DeploymentReason.SHADOW_FAILED,
    DeploymentReason.SHADOW_INCONCLUSIVE,
    DeploymentReason.ANALYSIS_FAILED,
    DeploymentReason.ABORTED,
    DeploymentReason.SUPERSEDED,
)
ROLLOUT_RESULTS = ("Promoted", "RolledBack")
ANALYSIS_RESULTS = ("passed", "failed", "inconclusive")
PROMETHEUS_ERRORS = ("timeout", "unreachable", "http", "promql", "result", "series")


@dataclass(frozen=True)
class DeploymentRow:
    """What the gauges need of one ModelDeployment, read from its body."""

    stage: str
    candidate_weight: int

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> DeploymentRow:
        status = body.get("status") or {}
        weight = (status.get("weights") or {}).get("candidate", 0)
        return cls(str(status.get("stage") or RolloutStage.IDLE), int(weight or 0))


def analysis_names(body: Mapping[str, Any]) -> tuple[str, ...]:
    """The analysis metrics a ModelDeployment's canary evaluates (the built-in ones when unset)."""
    analysis = ((((body.get("spec") or {}).get("rollout") or {}).get("canary") or {}).get("analysis")) or {}
    metrics = analysis.get("metrics")
    if metrics is None:
        return tuple(m.name for m in DEFAULT_ANALYSIS)
    return tuple(str(m.get("name", "")) for m in metrics if isinstance(m, Mapping))


def _timestamp(value: Any) -> float:
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, str) and value:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return 0.0


class JobTable(Collector):
    """Every FineTuneJob the watch has shown, as gauges computed when Prometheus scrapes: the count by
    namespace, phase and method (every phase, zeros included), and when each unfinished job entered its
    phase (for "stuck" alerts)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], JobRow] = {}

    def update(self, namespace: str, name: str, row: JobRow | None) -> bool:
        """Record (or, with None, forget) a job's row; True when the job is new to the table."""
        if row is None:
            self.rows.pop((namespace, name), None)
            return False
        new = (namespace, name) not in self.rows
        self.rows[(namespace, name)] = row
        return new

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rows = list(self.rows.items())  # one atomic copy: the scrape runs in its own thread
        jobs = GaugeMetricFamily(
            f"{PREFIX}_jobs",
            "FineTuneJobs the operator watches, by phase and method.",
            labels=["namespace", "phase", "method"],
        )
        counts: dict[tuple[str, str, str], int] = {}
        for (namespace, _), row in rows:
            for phase in Phase:
                counts.setdefault((namespace, phase.value, row.method), 0)
            counts[(namespace, row.phase, row.method)] = counts.get((namespace, row.phase, row.method), 0) + 1
        for labels, count in sorted(counts.items()):
            jobs.add_metric(list(labels), count)
        yield jobs
        entered = GaugeMetricFamily(
            f"{PREFIX}_job_phase_entered_timestamp_seconds",
            "When each unfinished FineTuneJob entered its phase (Unix seconds); reason: why it waits.",
            labels=["namespace", "finetunejob", "method", "phase", "reason"],
        )
        for (namespace, name), row in sorted(rows):
            if not Phase(row.phase).terminal:
                entered.add_metric([namespace, name, row.method, row.phase, row.reason], row.entered)
        yield entered

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # computed at scrape time: nothing to check at registration


class DeploymentTable(Collector):
    """Every ModelDeployment the watch has shown, as gauges computed when Prometheus scrapes: its stage
    (1 for the current one, 0 for the others) and the candidate's traffic weight."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], DeploymentRow] = {}

    def update(self, namespace: str, name: str, row: DeploymentRow | None) -> bool:
        """Record (or, with None, forget) a deployment's row; True when it is new to the table."""
        if row is None:
            self.rows.pop((namespace, name), None)
            return False
        new = (namespace, name) not in self.rows
        self.rows[(namespace, name)] = row
        return new

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rows = sorted(self.rows.items())
        stage = GaugeMetricFamily(
            f"{PREFIX}_modeldeployment_stage",
            "Each ModelDeployment's rollout stage: 1 for the current one, 0 for the others.",
            labels=["namespace", "modeldeployment", "stage"],
        )
        weight = GaugeMetricFamily(
            f"{PREFIX}_modeldeployment_candidate_weight",
            "Percent of each ModelDeployment's traffic routed to its candidate.",
            labels=["namespace", "modeldeployment"],
        )
        for (namespace, name), row in rows:
            for value in RolloutStage:
                stage.add_metric([namespace, name, value.value], 1 if row.stage == value else 0)
            weight.add_metric([namespace, name], row.candidate_weight)
        yield stage
        yield weight

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


def _version() -> str:
    try:
        return importlib.metadata.version("finetune-operator")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Metrics:
    """The operator's series on one registry (a fresh one per test; `METRICS` in the operator)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.table = JobTable()
        r.register(self.table)
        self.deployments = DeploymentTable()
        r.register(self.deployments)
        ProcessCollector(registry=r)
        Gauge(f"{PREFIX}_build_info", "Always 1; the version running.", ["version"], registry=r).labels(
            _version()
        ).set(1)
        self.transitions = Counter(
            f"{PREFIX}_job_phase_transitions",
            "Phase changes the operator wrote.",
            ["namespace", "method", "from_phase", "to_phase"],
            registry=r,
        )
        self.phase_duration = Histogram(
            f"{PREFIX}_job_phase_duration_seconds",
            "Time a FineTuneJob spent in a phase, observed when it left it.",
            ["method", "phase"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.failures = Counter(
            f"{PREFIX}_job_failures",
            "FineTuneJobs that ended Failed or Rejected, by the reason.",
            ["namespace", "method", "reason"],
            registry=r,
        )
        self.queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds",
            "Time a FineTuneJob with resources.queueName waited for Kueue (Pending -> Training).",
            ["method", "queue"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.verdicts = Counter(
            f"{PREFIX}_gate_verdicts",
            "EvalGate verdicts recorded.",
            ["namespace", "gate", "verdict"],
            registry=r,
        )
        self.checks = Counter(
            f"{PREFIX}_gate_checks",
            "Checks of the recorded verdicts.",
            ["namespace", "gate", "suite", "metric", "result"],
            registry=r,
        )
        self.promotions = Counter(
            f"{PREFIX}_promotions",
            "Promotions that ended.",
            ["namespace", "method", "result"],
            registry=r,
        )
        self.reconcile_duration = Histogram(
            f"{PREFIX}_reconcile_duration_seconds",
            "One observe -> reconcile -> apply step.",
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.reconcile_errors = Counter(
            f"{PREFIX}_reconcile_errors",
            "Reconcile steps that raised, by error class.",
            ["error"],
            registry=r,
        )
        self.api_errors = Counter(
            f"{PREFIX}_kube_api_errors",
            "Kubernetes API requests of the operator's client that failed (code 0: no answer).",
            ["verb", "code"],
            registry=r,
        )
        self.loops = Gauge(
            f"{PREFIX}_reconcile_loops", "FineTuneJobs with a running reconcile loop.", registry=r
        )
        self.deployment_loops = Gauge(
            f"{PREFIX}_modeldeployment_loops", "ModelDeployments with a running reconcile loop.", registry=r
        )
        self.rollouts = Counter(
            f"{PREFIX}_rollouts",
            "ModelDeployment rollouts that ended, by result (Promoted, RolledBack).",
            ["namespace", "result"],
            registry=r,
        )
        self.rollbacks = Counter(
            f"{PREFIX}_rollbacks",
            "ModelDeployment rollouts rolled back, by the reason.",
            ["namespace", "reason"],
            registry=r,
        )
        self.analyses = Counter(
            f"{PREFIX}_rollout_analyses",
            "Canary analyses recorded, by metric and result (passed, failed, inconclusive).",
            ["namespace", "metric", "result"],
            registry=r,
        )
        self.prometheus_errors = Counter(
            f"{PREFIX}_prometheus_query_errors",
            "Prometheus queries of the operator that failed, by reason.",
            ["reason"],
            registry=r,
        )
        for reason in PROMETHEUS_ERRORS:
            self.prometheus_errors.labels(reason)

    def seen(self, namespace: str, method: str, gate: str | None) -> None:
        """A job first seen: create at 0 the series its lifecycle can move (see the module docstring)."""
        for old, new in EDGES:
            self.transitions.labels(namespace, method, old, new)
        for reason in END_REASONS:
            self.failures.labels(namespace, method, reason)
        for result in ("succeeded", "failed"):
            self.promotions.labels(namespace, method, result)
        if gate:
            for verdict in Verdict:
                self.verdicts.labels(namespace, gate, verdict)

    def gate_read(self, namespace: str, gate: EvalGate) -> None:
        """A job's gate read (training ended): create at 0 its verdicts' and checks' series."""
        name = gate.metadata.name
        for verdict in Verdict:
            self.verdicts.labels(namespace, name, verdict)
        for suite in gate.spec.suites:
            for result in ("passed", "failed"):
                self.checks.labels(namespace, name, suite.name, str(suite.metric), result)

    def deployment_seen(self, namespace: str, analyses: tuple[str, ...]) -> None:
        """A ModelDeployment first seen: create at 0 the series its rollouts can move."""
        for result in ROLLOUT_RESULTS:
            self.rollouts.labels(namespace, result)
        for reason in ROLLBACK_REASONS:
            self.rollbacks.labels(namespace, reason)
        for metric in analyses:
            for result in ANALYSIS_RESULTS:
                self.analyses.labels(namespace, metric, result)

    def record_deployment(
        self, namespace: str, old: ModelDeploymentStatus, new: ModelDeploymentStatus
    ) -> None:
        """Count what writing `new` over a ModelDeployment's status changed: the end of a rollout and the
        analyses it adds. Called once per status write, after it succeeded."""
        if new.stage != old.stage and new.stage == RolloutStage.SUCCEEDED:
            self.rollouts.labels(namespace, "Promoted").inc()
        if new.stage != old.stage and new.stage == RolloutStage.ROLLED_BACK:
            self.rollouts.labels(namespace, "RolledBack").inc()
            reason = next(
                (c.reason for c in new.conditions if c.type == DeploymentConditionType.ROLLED_BACK),
                "Unknown",
            )
            self.rollbacks.labels(namespace, reason).inc()
        known = {(a.time, a.step, a.metric) for a in old.analyses}
        for analysis in new.analyses:
            if (analysis.time, analysis.step, analysis.metric) not in known:
                result = {True: "passed", False: "failed", None: "inconclusive"}[analysis.passed]
                self.analyses.labels(namespace, analysis.metric, result).inc()

    def record(self, job: FineTuneJob, new: FineTuneJobStatus, now: dt.datetime) -> None:
        """Count what writing `new` over the job's current status changed: its phase, a verdict, the end
        of a promotion or of the run. Called once per status write, after it succeeded, so a restart
        (which rewrites nothing) counts nothing twice."""
        old = job.status
        namespace = job.metadata.namespace or ""
        method = str(job.spec.method)
        if new.phase != old.phase:
            self.transitions.labels(namespace, method, old.phase, new.phase).inc()
            since = old.last_phase_transition_time or job.metadata.creation_timestamp
            spent = max(0.0, (now - since).total_seconds()) if since is not None else None
            if spent is not None:
                self.phase_duration.labels(method, old.phase).observe(spent)
                queue = job.spec.resources.queue_name
                if queue and old.phase == Phase.PENDING and new.phase == Phase.TRAINING:
                    self.queue_wait.labels(method, queue).observe(spent)
            if new.phase in (Phase.FAILED, Phase.REJECTED):
                reason = _ended_reason(new)
                self.failures.labels(namespace, method, reason).inc()
                if old.phase == Phase.PROMOTING:
                    self.promotions.labels(namespace, method, "failed").inc()
        if new.promoted is not None and old.promoted is None:
            self.promotions.labels(namespace, method, "succeeded").inc()
        gate = job.spec.eval_gate_ref
        if new.gate is not None and gate is not None and _new_verdict(old, new):
            self.verdicts.labels(namespace, gate.name, new.gate.verdict).inc()
            for check in new.gate.metrics:
                result = "passed" if check.passed else "failed"
                self.checks.labels(namespace, gate.name, check.suite, check.metric, result).inc()


def _ended_reason(status: FineTuneJobStatus) -> str:
    for condition in status.conditions:
        if condition.type == ConditionType.SUCCEEDED and condition.status == "False":
            return condition.reason
    return "Unknown"


def _new_verdict(old: FineTuneJobStatus, new: FineTuneJobStatus) -> bool:
    if new.gate is None:
        return False
    if old.gate is None:
        return True
    return (old.gate.verdict_id, old.gate.evaluated_at) != (new.gate.verdict_id, new.gate.evaluated_at)


METRICS = Metrics()
