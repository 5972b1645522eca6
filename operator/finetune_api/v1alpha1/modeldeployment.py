"""ModelDeployment: the long-lived serving endpoint of one model line, and how a new version rolls out.

The operator owns what serves it: a stable Deployment and Service, a candidate Deployment and Service while a
rollout runs, and one HTTPRoute (Gateway API) that splits the traffic between them and mirrors requests to the
candidate. Git holds only the ModelDeployment, so a GitOps tool never fights the operator over weights.

A version to roll out comes from a FineTuneJob that names this deployment (`spec.deployment.name`) and
succeeds with a promoted version, or from a change of `spec.model`. A rollout runs:

- **Shadow** (when `rollout.shadow` is set): the candidate gets weight 0 and a `RequestMirror` of
  `mirrorPercent` of the requests. Both servers keep their replies by `x-request-id`; the candidate's server
  pairs each of its replies with the stable's reply to the same request and grades the pair with the
  checks' graders (as an EvalGate suite would). The canary starts only when every check has been shown to
  meet its threshold on at least `minSamples` live requests (the one-sided confidence bound at `confidence`,
  not the mean); a check shown to miss it, or too little evidence within `maxDuration`, rolls back: the
  candidate never serves a live user.
- **Canary**: the candidate's weight steps up (`canary.steps`); every `analysis.interval` the operator
  evaluates each analysis metric (a PromQL template, `thresholdRange {min, max}`) against Prometheus, and the
  shadow checks keep counting on the mirrored requests. More than `failureLimit` failed analyses roll back:
  weight 0, no mirror, stage RolledBack with a condition, an Event and a metric. A query that returns no
  data is inconclusive, never a pass; `inconclusiveLimit` of them in a row count as a failure.
- **Promoting**: after the last step the stable Deployment takes the candidate's version while the candidate
  serves all traffic, then the route returns to the stable Service and the candidate's objects go.

Manual control, by annotation (`ROLLOUT_ACTION_ANNOTATION` with the requester's own user name in
`ROLLOUT_ACTION_BY_ANNOTATION`, enforced by the generated admission policy as approvals are): `pause` holds
the rollout where it is while set; `resume`, `abort` (roll back now) and `promote` (skip the remaining steps)
are acted on once, recorded in the history with the user, and removed by the operator.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from finetune_api.base import (
    GROUP,
    ApiModel,
    CrdNames,
    Digest,
    Duration,
    Image,
    Name,
    Pattern,
    PrinterColumn,
    Quantity,
    Rule,
    Uri,
    list_map,
)
from finetune_api.v1alpha1.common import (
    ExtendedResourceName,
    HttpUrl,
    ObjectMeta,
    S3Storage,
    Threshold,
    Toleration,
)
from finetune_api.v1alpha1.graders import Grader
from finetune_api.v1alpha1.modeldeployment_status import *  # noqa: F403 - re-exports its __all__
from finetune_api.v1alpha1.modeldeployment_status import ModelDeploymentStatus

# Manual control: `kubectl annotate mdep NAME finetune.dev/rollout-action=pause
# finetune.dev/rollout-action-by=$(kubectl auth whoami -o jsonpath='{.status.userInfo.username}')`.
ROLLOUT_ACTION_ANNOTATION = f"{GROUP}/rollout-action"
ROLLOUT_ACTION_BY_ANNOTATION = f"{GROUP}/rollout-action-by"
ROLLOUT_ANNOTATIONS = (ROLLOUT_ACTION_ANNOTATION, ROLLOUT_ACTION_BY_ANNOTATION)
RolloutAction = Literal["pause", "resume", "abort", "promote"]
ROLLOUT_ACTIONS: tuple[RolloutAction, ...] = ("pause", "resume", "abort", "promote")

HOSTNAME = Pattern(
    r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    "must be a hostname of lowercase letters, digits, '-' and '.', optionally starting with *. for a "
    "wildcard (e.g. chat.example.com or *.example.com)",
)
PATH_PREFIX = Pattern(r"^/[^\s]*$", "must be a URL path starting with '/', without spaces (e.g. /v1)")


class ServedModel(ApiModel):
    """A promoted version: its folder (the one holding MANIFEST.json) and the digest of that manifest. The
    model server refuses a version whose manifest does not hash to `digest`."""

    uri: Uri
    digest: Digest


class ServingResources(ApiModel):
    """What each model server pod asks the scheduler for."""

    gpus: Annotated[int, Field(ge=0, le=16)] = 0
    gpu_resource_name: ExtendedResourceName = "nvidia.com/gpu"
    cpu: Quantity | None = None
    memory: Quantity | None = None
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, max_length=32
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)


class ServingTemplate(ApiModel):
    """The model server: `python -m finetune_trainer serve` in the trainer image unless `image` says
    otherwise (an image with the same entry point)."""

    image: Image | None = Field(
        default=None, description="Model server image; the operator's configured trainer image when unset."
    )
    replicas: Annotated[int, Field(ge=1, le=100)] = 1
    resources: ServingResources = Field(default_factory=ServingResources)
    port: Annotated[int, Field(ge=1024, le=65535)] = 8000
    max_batch_size: Annotated[int, Field(ge=1, le=256)] = Field(
        default=8, description="Requests generated together in one batch."
    )
    max_new_tokens: Annotated[int, Field(ge=1, le=32768)] = Field(
        default=256, description="Upper bound on a reply's tokens, whatever a request asks."
    )
    service_account_name: Name | None = None


class ParentReference(ApiModel):
    """A Gateway the generated HTTPRoute attaches to (Gateway API `parentRefs`)."""

    name: Name
    namespace: Name | None = None
    section_name: Name | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None


class GatewayRoute(ApiModel):
    parent_refs: Annotated[list[ParentReference], Field(min_length=1, max_length=32)]
    hostnames: Annotated[list[Annotated[str, Field(max_length=253), HOSTNAME]], Field(max_length=16)] = Field(
        default_factory=list
    )
    path_prefix: Annotated[str, Field(max_length=1024), PATH_PREFIX] = "/"


class PrometheusSource(ApiModel):
    address: HttpUrl = Field(
        description="Prometheus HTTP API base URL, e.g. http://prometheus-operated.monitoring:9090."
    )


ShadowMetric = Literal["win_rate", "grader_score", "refusal_rate", "toxicity_rate", "pii_leakage"]
SHADOW_HIGHER_IS_BETTER = frozenset({"win_rate", "grader_score"})
SHADOW_NEEDS_JUDGE = frozenset({"win_rate", "grader_score"})


class ShadowCheck(ApiModel):
    """One graded check of the candidate's live replies.

    - win_rate: how often the judge prefers the candidate's reply to the stable's reply to the same request
      (1 win, 0.5 tie, 0 loss; a pairwise judge sees both, in both orders); threshold.min.
    - grader_score: the judge's score of the candidate's reply alone, in [0, 1]; threshold.min.
    - refusal_rate, toxicity_rate, pii_leakage: the share of the candidate's replies that refuse, are
      toxic, or leak PII (the EvalGate's packaged detectors); threshold.max.
    """

    metric: ShadowMetric
    threshold: Threshold
    judge: Grader | None = Field(default=None, description="The judge for win_rate or grader_score.")

    cel_rules = (
        Rule(
            "!(self.metric in ['win_rate', 'grader_score']) || has(self.judge)",
            "metrics win_rate and grader_score need a judge",
            field_path=".judge",
            reason="FieldValueRequired",
        ),
        Rule(
            "!(self.metric in ['win_rate', 'grader_score']) || has(self.threshold.min)",
            "higher is better for grader_score and win_rate: use threshold.min",
            field_path=".threshold",
        ),
        Rule(
            "self.metric in ['win_rate', 'grader_score'] || has(self.threshold.max)",
            "lower is better for pii_leakage, refusal_rate and toxicity_rate: use threshold.max",
            field_path=".threshold",
        ),
        Rule(
            "(!has(self.threshold.min) || (self.threshold.min >= 0.0 && self.threshold.min <= 1.0)) && "
            "(!has(self.threshold.max) || (self.threshold.max >= 0.0 && self.threshold.max <= 1.0))",
            "a shadow check's threshold must lie between 0 and 1",
            field_path=".threshold",
        ),
    )


class ShadowPolicy(ApiModel):
    mirror_percent: Annotated[int, Field(ge=1, le=100)] = Field(
        default=100,
        description="Share of requests mirrored to the candidate while it shadows and during the canary.",
    )
    min_samples: Annotated[int, Field(ge=10, le=1_000_000)] = Field(
        default=100, description="Graded request pairs needed before any check can pass."
    )
    max_duration: Duration = Field(
        default="1h", description="Without a decision by then the rollout fails closed (rolled back)."
    )
    confidence: Annotated[float, Field(gt=0.5, lt=1.0)] = Field(
        default=0.95, description="One-sided confidence of the bound each check's threshold is held to."
    )
    checks: Annotated[list[ShadowCheck], Field(min_length=1, max_length=8), *list_map("metric")]


class CanaryStep(ApiModel):
    """One step: route `weight` percent to the candidate and analyse for `duration`, or `pause` until a
    `resume` (or `promote`) action."""

    weight: Annotated[int, Field(ge=0, le=100)] | None = None
    duration: Duration | None = None
    pause: bool = False

    cel_rules = (
        Rule(
            "has(self.weight) != (has(self.pause) && self.pause)",
            "a step sets either weight (with a duration) or pause: true",
        ),
        Rule(
            "!has(self.weight) || has(self.duration)",
            "a weighted step needs a duration to analyse for",
            field_path=".duration",
            reason="FieldValueRequired",
        ),
    )


class ThresholdRange(ApiModel):
    """Flagger's `thresholdRange`: the value must be at least `min` and at most `max`."""

    min: float | None = None
    max: float | None = None

    cel_rules = (Rule("has(self.min) || has(self.max)", "set min, max or both"),)


class AnalysisMetric(ApiModel):
    """A PromQL query whose value must stay in `thresholdRange`. Placeholders: `{{ namespace }}`,
    `{{ modeldeployment }}`, `{{ variant }}` (candidate), `{{ stableDigest }}`, `{{ candidateDigest }}`,
    `{{ interval }}` (the analysis interval, e.g. 1m). The query must return one sample; none is no data."""

    name: Name
    query: Annotated[str, Field(min_length=1, max_length=4096)]
    threshold_range: ThresholdRange


class Analysis(ApiModel):
    interval: Duration = "1m"
    failure_limit: Annotated[int, Field(ge=0, le=100)] = Field(
        default=0, description="Failed analyses tolerated; one more rolls back (Argo Rollouts' failureLimit)."
    )
    inconclusive_limit: Annotated[int, Field(ge=1, le=100)] = Field(
        default=3, description="Analyses in a row without data before that counts as a failure."
    )
    metrics: Annotated[list[AnalysisMetric], Field(max_length=16), *list_map("name")] | None = Field(
        default=None,
        description="Unset: the built-in error rate (at most 1% 5xx) and latency (p95 at most 1.5 times "
        "the stable's) of the candidate; see docs/rollouts.md. An empty list analyses nothing but the "
        "shadow checks.",
    )


class CanaryPolicy(ApiModel):
    steps: Annotated[list[CanaryStep], Field(min_length=1, max_length=20)] = Field(
        default_factory=lambda: [
            CanaryStep(weight=10, duration="5m"),
            CanaryStep(weight=50, duration="10m"),
        ]
    )
    analysis: Analysis = Field(default_factory=Analysis)


class RolloutPolicy(ApiModel):
    shadow: ShadowPolicy | None = Field(
        default=None, description="Unset: no shadow stage, the canary starts at once."
    )
    canary: CanaryPolicy = Field(default_factory=CanaryPolicy)
    candidate_ready_timeout: Duration = Field(
        default="15m", description="How long the candidate's servers may take to become ready."
    )


class ModelDeploymentSpec(ApiModel):
    model: ServedModel = Field(
        description="The version served before any rollout; changing it later rolls the new one out."
    )
    base_model_uri: Uri | None = Field(
        default=None,
        description="Base weights for an adapter version; from the version's lineage.json when unset.",
    )
    serving: ServingTemplate = Field(default_factory=ServingTemplate)
    gateway: GatewayRoute
    storage: S3Storage = Field(description="Credentials to read versions, and where replies are captured.")
    prometheus: PrometheusSource
    rollout: RolloutPolicy = Field(default_factory=RolloutPolicy)

    cel_rules = (
        Rule(
            "!has(self.rollout) || !has(self.rollout.canary) || !has(self.rollout.canary.steps) || "
            "self.rollout.canary.steps.all(s, !has(s.weight) || s.weight < 100)",
            "canary step weights must be below 100: promotion sends all traffic to the new version",
            field_path=".rollout.canary.steps",
        ),
    )


class ModelDeployment(ApiModel):
    """A model's serving endpoint: versions roll out through graded shadow, canary analysis and promotion."""

    api_version: Literal["finetune.dev/v1alpha1"] = "finetune.dev/v1alpha1"
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    metadata: ObjectMeta
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus = Field(default_factory=ModelDeploymentStatus)

    max_name: ClassVar[int] = 42
    cel_rules = (
        Rule(
            "size(self.metadata.name) <= 42",
            "metadata.name must be at most 42 characters: Deployments and their pods append suffixes",
        ),
    )


MODELDEPLOYMENT_CRD = CrdNames(
    kind="ModelDeployment",
    plural="modeldeployments",
    short_names=("mdep",),
    description=ModelDeployment.__doc__ or "",
    printer_columns=(
        PrinterColumn("Stage", ".status.stage"),
        PrinterColumn("Step", ".status.summary"),
        PrinterColumn("Stable", ".status.stable.digest"),
        PrinterColumn("Candidate", ".status.candidate.digest"),
        PrinterColumn("Weight", ".status.weights.candidate", type="integer"),
        PrinterColumn("Mirror", ".status.mirrorPercent", type="integer", priority=1),
        PrinterColumn("Job", ".status.candidate.job", priority=1),
    ),
)

__all__ = [
    "MODELDEPLOYMENT_CRD",
    "ROLLOUT_ACTIONS",
    "ROLLOUT_ACTION_ANNOTATION",
    "ROLLOUT_ACTION_BY_ANNOTATION",
    "ROLLOUT_ANNOTATIONS",
    "SHADOW_HIGHER_IS_BETTER",
    "SHADOW_NEEDS_JUDGE",
    "Analysis",
    "AnalysisMetric",
    "CanaryPolicy",
    "CanaryStep",
    "GatewayRoute",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ParentReference",
    "PrometheusSource",
    "RolloutAction",
    "RolloutPolicy",
    "ServedModel",
    "ServingResources",
    "ServingTemplate",
    "ShadowCheck",
    "ShadowMetric",
    "ShadowPolicy",
    "ThresholdRange",
]
