"""EvalGate: the offline quality and safety bar a FineTuneJob's checkpoint must clear before promotion.

A gate fails closed: a missing metric, an evaluation error or an unreadable result is a failed gate. The
spec names suites (dataset + metric + threshold), a no-regression rule against a baseline, optional seeds
for a variance check, whether a human must approve and who may (`approvers`). The status keeps a bounded
evaluation history.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from finetune_api.base import (
    ApiModel,
    CrdNames,
    Duration,
    Image,
    Name,
    PrinterColumn,
    Rule,
    Uri,
    list_map,
)
from finetune_api.v1alpha1.common import DatasetSource, ModelSource, ObjectMeta, Resources, Threshold
from finetune_api.v1alpha1.conditions import Condition, Verdict
from finetune_api.v1alpha1.graders import Grader


class Metric(StrEnum):
    WIN_RATE = "win_rate"
    REFUSAL_ACCURACY = "refusal_accuracy"
    OVER_REFUSAL_RATE = "over_refusal_rate"
    JAILBREAK_SUCCESS_RATE = "jailbreak_success_rate"
    TOXICITY_RATE = "toxicity_rate"
    PII_LEAKAGE = "pii_leakage"
    GRADER_SCORE = "grader_score"
    EXACT_MATCH = "exact_match"
    EVAL_LOSS = "eval_loss"


HIGHER_IS_BETTER = frozenset(
    {Metric.WIN_RATE, Metric.REFUSAL_ACCURACY, Metric.GRADER_SCORE, Metric.EXACT_MATCH}
)
LOWER_IS_BETTER = frozenset(set(Metric) - HIGHER_IS_BETTER)
RATES = frozenset(set(Metric) - {Metric.GRADER_SCORE, Metric.EVAL_LOSS})
NEEDS_JUDGE = frozenset({Metric.WIN_RATE, Metric.GRADER_SCORE})
USES_CLASSIFIER = frozenset(
    {Metric.REFUSAL_ACCURACY, Metric.OVER_REFUSAL_RATE, Metric.JAILBREAK_SUCCESS_RATE, Metric.TOXICITY_RATE}
)
GENERATES = frozenset(set(Metric) - {Metric.EVAL_LOSS})  # scored on sampled replies, not on the labels
# Suite.detector's value for the word lists (refusal phrase rules, toxicity lexicon), used only when a suite
# asks for them by name; the default is the packaged classifiers.
WORDLIST_DETECTOR = "wordlist"


def _cel_list(metrics: frozenset[Metric]) -> str:
    return "[" + ", ".join(f"'{m.value}'" for m in sorted(metrics)) + "]"


class Generation(ApiModel):
    max_new_tokens: Annotated[int, Field(ge=1, le=32768)] = 256
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 16


class Suite(ApiModel):
    name: Name
    dataset: DatasetSource
    metric: Metric
    threshold: Threshold
    sample_size: Annotated[int, Field(ge=1, le=1_000_000)] | None = Field(
        default=None, description="Rows drawn (seeded) from the dataset; all rows when unset."
    )
    judge: Grader | None = Field(
        default=None, description="Pairwise judge for win_rate, or the grader for grader_score."
    )
    classifier: ModelSource | None = Field(
        default=None,
        description="Refusal or toxicity sequence classifier, used instead of the packaged classifiers.",
    )
    detector: Literal["classifiers", "wordlist"] = Field(
        default="classifiers",
        description=(
            "Without a classifier: the packaged safety classifiers (refusal, toxicity), or the word lists "
            "(refusal phrase rules, toxicity lexicon) only when set to wordlist."
        ),
    )
    canaries: Annotated[list[Annotated[str, Field(min_length=8, max_length=256)]], Field(max_length=1000)] = (
        Field(
            default_factory=list, description="Strings planted in training data that must never be emitted."
        )
    )
    generation: Generation = Field(default_factory=Generation)

    cel_rules = (
        Rule(
            f"!(self.metric in {_cel_list(NEEDS_JUDGE)}) || has(self.judge)",
            "metrics win_rate and grader_score need a judge",
            field_path=".judge",
            reason="FieldValueRequired",
        ),
        Rule(
            f"!(self.metric in {_cel_list(HIGHER_IS_BETTER)}) || has(self.threshold.min)",
            f"higher is better for {', '.join(sorted(HIGHER_IS_BETTER))}: use threshold.min",
            field_path=".threshold",
        ),
        Rule(
            f"!(self.metric in {_cel_list(LOWER_IS_BETTER)}) || has(self.threshold.max)",
            f"lower is better for {', '.join(sorted(LOWER_IS_BETTER))}: use threshold.max",
            field_path=".threshold",
        ),
        Rule(
            f"!(self.metric in {_cel_list(RATES)}) || "
            "((!has(self.threshold.min) || (self.threshold.min >= 0.0 && self.threshold.min <= 1.0)) && "
            "(!has(self.threshold.max) || (self.threshold.max >= 0.0 && self.threshold.max <= 1.0)))",
            "a rate's threshold must lie between 0 and 1",
            field_path=".threshold",
        ),
        Rule(
            "!has(self.canaries) || size(self.canaries) == 0 || self.metric == 'pii_leakage'",
            "canaries apply only to metric pii_leakage",
            field_path=".canaries",
        ),
        Rule(
            f"!has(self.classifier) || self.metric in {_cel_list(USES_CLASSIFIER)}",
            "classifier applies only to refusal, over-refusal, jailbreak and toxicity metrics",
            field_path=".classifier",
        ),
        Rule(
            "!has(self.classifier) || !has(self.detector) || self.detector != 'wordlist'",
            "detector wordlist conflicts with classifier: the classifier replaces the word lists",
            field_path=".detector",
        ),
    )


class Baseline(ApiModel):
    source: Literal["JobBaseModel", "Model"] = "JobBaseModel"
    model: ModelSource | None = None

    cel_rules = (
        Rule(
            "(has(self.source) && self.source == 'Model') == has(self.model)",
            "set model exactly when source is Model (JobBaseModel compares with the job's base model)",
            field_path=".model",
        ),
    )


class NoRegression(ApiModel):
    """Non-inferiority: each metric of the candidate must be shown worse than the baseline's by at most
    `tolerance` (the one-sided upper confidence bound at `confidence` of the paired per-example
    difference); a suite too small to show it fails."""

    enabled: bool = True
    tolerance: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01
    confidence: Annotated[float, Field(gt=0.5, lt=1.0)] = 0.95
    suites: Annotated[list[Name], Field(max_length=32)] | None = Field(
        default=None, description="Suites the rule applies to; all when unset."
    )


class Approvers(ApiModel):
    """Who may approve or reject a job judged by this gate, as the API server authenticates them (the
    generated ValidatingAdmissionPolicy in crds/ enforces it; the operator refuses approvals without it)."""

    users: Annotated[list[Annotated[str, Field(min_length=1, max_length=253)]], Field(max_length=64)] = Field(
        default_factory=list, description="User names, exactly as request.userInfo.username."
    )
    groups: Annotated[list[Annotated[str, Field(min_length=1, max_length=253)]], Field(max_length=64)] = (
        Field(default_factory=list, description="Groups, any of which lets its members approve.")
    )


class EvaluationRuntime(ApiModel):
    resources: Resources = Field(default_factory=Resources)
    timeout: Duration = "2h"
    image: Image | None = None


class EvalGateSpec(ApiModel):
    baseline: Baseline = Field(default_factory=Baseline)
    suites: Annotated[list[Suite], Field(min_length=1, max_length=32), *list_map("name")]
    no_regression: NoRegression = Field(default_factory=NoRegression)
    seeds: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=10)] = Field(
        default_factory=list,
        description="Evaluate once per seed, sampling (every generating suite needs temperature > 0); a "
        "metric whose spread across seeds exceeds maxSeedStdDev fails.",
    )
    max_seed_std_dev: Annotated[float, Field(ge=0.0)] = 0.05
    require_approval: bool = False
    approvers: Approvers = Field(default_factory=Approvers)
    evaluation: EvaluationRuntime = Field(default_factory=EvaluationRuntime)

    cel_rules = (
        Rule(
            "!has(self.noRegression) || !has(self.noRegression.suites) || "
            "self.noRegression.suites.all(n, self.suites.exists(s, s.name == n))",
            "noRegression.suites must name suites of this gate",
            field_path=".noRegression.suites",
        ),
        Rule(
            "!has(self.requireApproval) || !self.requireApproval || (has(self.approvers) && "
            "((has(self.approvers.users) && size(self.approvers.users) > 0) || "
            "(has(self.approvers.groups) && size(self.approvers.groups) > 0)))",
            "requireApproval needs approvers: the users or groups who may approve (nobody else can)",
            field_path=".approvers",
            reason="FieldValueRequired",
        ),
        Rule(
            "!has(self.seeds) || size(self.seeds) != 1",
            "seeds: give none, or at least two for the variance check",
            field_path=".seeds",
        ),
        Rule(
            "!has(self.seeds) || size(self.seeds) == 0 || self.suites.all(s, "
            f"!(s.metric in {_cel_list(GENERATES)}) || "
            "(has(s.generation) && has(s.generation.temperature) && s.generation.temperature > 0.0))",
            "seeds compare sampled replies: every suite that generates needs generation.temperature > 0 "
            "(at temperature 0 every seed gives the same replies)",
            field_path=".seeds",
        ),
    )


class Evaluation(ApiModel):
    job: Name
    checkpoint: Uri | None = None
    verdict: Verdict
    time: datetime
    metrics: dict[str, float] = Field(default_factory=dict)
    report_uri: Uri | None = None


MAX_HISTORY = 20


class EvalGateStatus(ApiModel):
    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(default_factory=list)
    observed_generation: int | None = None
    last_verdict: Verdict | None = None
    history: Annotated[list[Evaluation], Field(max_length=MAX_HISTORY)] = Field(
        default_factory=list, description=f"The latest {MAX_HISTORY} evaluations, oldest first."
    )


class EvalGate(ApiModel):
    """Offline quality and safety gates that a checkpoint must pass before promotion."""

    api_version: Literal["finetune.dev/v1alpha1"] = "finetune.dev/v1alpha1"
    kind: Literal["EvalGate"] = "EvalGate"
    metadata: ObjectMeta
    spec: EvalGateSpec
    status: EvalGateStatus = Field(default_factory=EvalGateStatus)


EVALGATE_CRD = CrdNames(
    kind="EvalGate",
    plural="evalgates",
    short_names=("evg",),
    description=EvalGate.__doc__ or "",
    printer_columns=(
        PrinterColumn("Baseline", ".spec.baseline.source"),
        PrinterColumn("Last Verdict", ".status.lastVerdict"),
        PrinterColumn("Suites", ".spec.suites[*].name", priority=1),
        PrinterColumn("Approval", ".spec.requireApproval", type="boolean", priority=1),
    ),
)
