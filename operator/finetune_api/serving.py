"""The model server's contract: what `python -m finetune_trainer serve` reads, what it exports, where it
keeps replies. The operator renders a `ServeContract` per variant into a ConfigMap mounted at
`SERVE_CONFIG_PATH`; the server, the operator's PromQL and docs/rollouts.md share the names below.

Captured replies (only when `capture_uri` is set), one JSON object per request and variant:

    <capture_uri><x-request-id>/<variant>.json    `CapturedReply` (create-only: a mirrored duplicate of a
                                                  request the same server already answered is not rewritten)

The candidate's server pairs each of its replies with the stable's reply to the same request id, grades the
pair with the shadow checks, and counts the scores in three counters per check (`GRADED_*`), so that the
operator can compute a mean and its confidence bound from Prometheus alone. Scores lie in [0, 1].

Pure: pydantic models and constants, no I/O.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from finetune_api.base import ApiModel, Name, ShortText, Uri
from finetune_api.v1alpha1.modeldeployment import AnalysisMetric, ServedModel, ShadowCheck, ThresholdRange

SERVE_CONFIG_PATH = "/etc/finetune/serve.json"
ENV_SERVE_CONTRACT = "FINETUNE_SERVE_CONTRACT"  # the contract itself, which wins over the file when set
SERVE_COMMAND = ("python", "-m", "finetune_trainer", "serve")
REQUEST_ID_HEADER = "x-request-id"
VARIANT_HEADER = "x-finetune-variant"  # every answer names the variant that gave it
Variant = Literal["stable", "candidate"]
VARIANTS: tuple[Variant, ...] = ("stable", "candidate")

# Prometheus series the model server exports on /metrics (its serving port). Every series carries the
# labels in SERVE_LABELS, so a query needs no scrape relabelling.
SERVE_LABELS = ("namespace", "modeldeployment", "variant", "digest")
REQUESTS = "finetune_serve_requests_total"  # + code: the HTTP status answered
REQUEST_DURATION = "finetune_serve_request_duration_seconds"  # histogram, whole request
TOKENS = "finetune_serve_tokens_total"  # + kind: prompt | completion
BATCH_SIZE = "finetune_serve_batch_size"  # histogram of requests generated together
GRADED_SAMPLES = "finetune_serve_graded_samples_total"  # + metric: pairs graded
GRADED_SCORE = "finetune_serve_graded_score_total"  # + metric: sum of the scores
GRADED_SCORE_SQUARES = "finetune_serve_graded_score_squares_total"  # + metric: sum of squared scores
GRADING_ERRORS = "finetune_serve_grading_errors_total"  # + metric: pairs the judge could not grade
UNPAIRED = "finetune_serve_unpaired_total"  # candidate replies whose stable reply never came
CAPTURE_DROPPED = "finetune_serve_capture_dropped_total"  # replies not kept: queue full or write failed


class ServeStorage(ApiModel):
    """How the server reaches S3 (credentials arrive as AWS_* environment variables from the Secret)."""

    endpoint: str | None = None
    region: str | None = None
    force_path_style: bool = True


class Grading(ApiModel):
    """What the candidate's server grades, and how long it waits for the stable's reply to a request."""

    checks: Annotated[list[ShadowCheck], Field(min_length=1, max_length=8)]
    pair_timeout_seconds: Annotated[float, Field(gt=0.0, le=3600.0)] = 30.0


class ServeContract(ApiModel):
    contract_version: Literal[1] = 1
    namespace: Name
    deployment: Name = Field(description="The ModelDeployment's name (label `modeldeployment`).")
    variant: Variant
    model: ServedModel
    base_model_uri: Uri | None = Field(
        default=None, description="Base weights for an adapter version; the version's lineage.json otherwise."
    )
    storage: ServeStorage = Field(default_factory=ServeStorage)
    capture_uri: Uri | None = Field(
        default=None, description="Where replies are kept by request id; nothing is kept when unset."
    )
    grading: Grading | None = Field(default=None, description="Only the candidate grades.")
    max_batch_size: Annotated[int, Field(ge=1, le=256)] = 8
    max_new_tokens: Annotated[int, Field(ge=1, le=32768)] = 256


class CapturedReply(ApiModel):
    request_id: ShortText
    variant: Variant
    digest: Annotated[str, Field(max_length=71)]
    time: datetime
    messages: list[dict[str, object]] = Field(description="The request's chat messages, as sent.")
    reply: str = ""
    status: int = Field(description="The HTTP status the server answered.")
    latency_seconds: float = 0.0


def capture_key(request_id: str, variant: Variant) -> str:
    """A reply's key under the capture URI. Request ids come from clients and proxies: anything but
    letters, digits, '-', '_' and '.' is replaced, so an id can never name another folder."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in request_id)[:128].lstrip(".") or "_"
    return f"{safe}/{variant}.json"


# The analysis a canary runs when `analysis.metrics` is unset (Flagger's request-success-rate and
# request-duration, on the model server's own series: Envoy's stats are not assumed).
_CANDIDATE = (
    'namespace="{{ namespace }}",modeldeployment="{{ modeldeployment }}",variant="candidate",'
    'digest="{{ candidateDigest }}"'
)
_STABLE = 'namespace="{{ namespace }}",modeldeployment="{{ modeldeployment }}",variant="stable"'
DEFAULT_ANALYSIS: tuple[AnalysisMetric, ...] = (
    AnalysisMetric(
        name="error-rate",
        # `or vector(0)`: no 5xx series at all is a rate of 0, not "no data"
        query=(
            f'(sum(rate({REQUESTS}{{{_CANDIDATE},code=~"5.."}}[{{{{ interval }}}}])) or vector(0)) / '
            f"sum(rate({REQUESTS}{{{_CANDIDATE}}}[{{{{ interval }}}}]))"
        ),
        threshold_range=ThresholdRange(max=0.01),
    ),
    AnalysisMetric(
        name="latency-p95-vs-stable",
        query=(
            f"histogram_quantile(0.95, sum by (le) (rate({REQUEST_DURATION}_bucket{{{_CANDIDATE}}}"
            "[{{ interval }}]))) / "
            f"histogram_quantile(0.95, sum by (le) (rate({REQUEST_DURATION}_bucket{{{_STABLE}}}"
            "[{{ interval }}])))"
        ),
        threshold_range=ThresholdRange(max=1.5),
    ),
)


def render_query(template: str, values: dict[str, str]) -> str:
    """A template with its `{{ name }}` placeholders filled. A placeholder with no value stays in the text, so
    Prometheus refuses the query and its error names it."""
    out = template
    for key, value in values.items():
        out = out.replace(f"{{{{ {key} }}}}", value).replace(f"{{{{{key}}}}}", value)
    return out
