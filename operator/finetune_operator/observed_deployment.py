"""What the rollout reconcile of a ModelDeployment sees and decides, as plain data: built by the handlers
(from watch-fed indexes), the API and Prometheus, read by `reconcile.rollout`.

The observe -> decide loop runs in two halves, as for FineTuneJobs and S3: `reconcile.rollout.reads` says
which Prometheus queries the next decision needs (none while nothing is being judged), the handlers run
them, and `reconcile.rollout.reconcile_deployment` decides from the answers. A query that fails is an
`error`, never a number: decisions that need it wait (and fail closed after their deadline)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from finetune_api.serving import Variant
from finetune_api.v1alpha1 import ModelDeployment
from finetune_api.v1alpha1.finetunejob_status import RolloutLink
from finetune_api.v1alpha1.modeldeployment import RolloutAction
from finetune_api.v1alpha1.modeldeployment_status import ModelDeploymentStatus
from finetune_operator.observed import Event

Manifest = dict[str, Any]


@dataclass(frozen=True)
class ServerObservation:
    """A model server Deployment the operator owns (`<name>-stable` or `<name>-candidate`), reduced to
    what decisions need. `digest` is the version its pod template serves (annotation MODEL_DIGEST)."""

    variant: Variant
    digest: str | None
    generation: int = 0
    observed_generation: int = 0
    replicas: int = 0
    ready_replicas: int = 0
    updated_replicas: int = 0

    @property
    def ready(self) -> bool:
        """Rolled out and every replica ready, at the Deployment's current generation."""
        return (
            self.observed_generation >= self.generation
            and self.replicas > 0
            and self.ready_replicas >= self.replicas
            and self.updated_replicas >= self.replicas
        )


@dataclass(frozen=True)
class RouteObservation:
    """The HTTPRoute the operator owns: whether every parent Gateway accepted it and resolved its refs."""

    accepted: bool | None = None  # None: no parent has reported yet
    message: str = ""
    generation: int = 0
    observed_generation: int = 0  # the lowest observedGeneration among the parents' conditions


@dataclass(frozen=True)
class PromotedVersion:
    """A FineTuneJob naming this deployment that succeeded with a promoted version."""

    job: str
    uri: str
    digest: str
    promoted_at: datetime | None
    link: RolloutLink | None = None  # what the job's status says now (written only when it changes)


@dataclass(frozen=True)
class Sums:
    """A shadow check's counters for the current candidate, summed over its servers (from Prometheus)."""

    samples: float = 0.0
    total: float = 0.0
    squares: float = 0.0


@dataclass(frozen=True)
class QueryResult:
    """One PromQL answer: a value, no data (`value` None, no error), or an error."""

    value: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class PrometheusReads:
    """What the next decision needs from Prometheus: each shadow check's counters (`shadow`: metric ->
    the three queries, samples/total/squares) and each analysis metric (`analysis`: name -> query)."""

    shadow: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    analysis: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.shadow or self.analysis)


@dataclass(frozen=True)
class DeploymentObserved:
    deployment: ModelDeployment
    now: datetime
    servers: dict[Variant, ServerObservation] = field(default_factory=dict)
    route: RouteObservation | None = None  # None: the HTTPRoute does not exist
    versions: tuple[PromotedVersion, ...] = ()
    # The manual action on the object (annotations) and who set it; `action_problem` says why actions
    # cannot be trusted now (the admission policy that checks the name is missing): they fail closed.
    action: RolloutAction | str | None = None
    action_by: str | None = None
    action_problem: str | None = "the rollout admission policy was not observed"
    shadow: dict[str, Sums] | None = None  # filled when PrometheusReads.shadow asked for it
    analysis: dict[str, QueryResult] | None = None  # filled when PrometheusReads.analysis asked for it
    prometheus_error: str | None = None  # Prometheus unreachable or refusing: judgements wait
    spec_error: str | None = None  # the spec failed to load into the model


@dataclass
class DeploymentDecision:
    """Objects to apply (server-side apply, one field manager), objects to delete (kind, name), the new
    status, events, the FineTuneJobs' rollout links to write, whether to remove the consumed action
    annotations, and when to look again."""

    status: ModelDeploymentStatus
    apply: list[Manifest] = field(default_factory=list)
    delete: list[tuple[str, str]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    job_links: dict[str, RolloutLink] = field(default_factory=dict)
    clear_action: bool = False
    requeue_after: float | None = None
