"""FineTuneJob: one fine-tuning run from data validation to a promoted, gated checkpoint.

The spec says what to train and under which gates; it is immutable after creation except `suspend` and
`runPolicy`. The status is written only by the operator; its types live in `finetunejob_status` and are
exported from here too. Cross-field rules are CEL (`cel_rules`), so the API server enforces them and
`finetune validate` evaluates the same text offline.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import ConfigDict, Field, StrictFloat, StrictInt, model_validator

from finetune_api.base import (
    ApiModel,
    AutoNumber,
    CrdNames,
    Duration,
    Fraction,
    Image,
    Name,
    PrinterColumn,
    Rule,
    ShortText,
    Uri,
)
from finetune_api.v1alpha1.common import (
    DatasetFormat,
    DatasetSource,
    LocalObjectReference,
    ModelSource,
    ObjectMeta,
    Resources,
    S3Storage,
)
from finetune_api.v1alpha1.finetunejob_status import *  # noqa: F403 - re-exports its __all__
from finetune_api.v1alpha1.finetunejob_status import FineTuneJobStatus
from finetune_api.v1alpha1.graders import Grader


class Method(StrEnum):
    SFT = "sft"
    VISION = "vision"
    DPO = "dpo"
    RFT = "rft"


# Which dataset formats each method trains on ("auto" is always accepted and detected from the rows).
METHOD_FORMATS: dict[Method, tuple[DatasetFormat, ...]] = {
    Method.SFT: (DatasetFormat.CHAT, DatasetFormat.PROMPT_COMPLETION),
    Method.VISION: (DatasetFormat.VISION_CHAT, DatasetFormat.IMAGE_LABEL),
    Method.DPO: (DatasetFormat.PREFERENCE,),
    Method.RFT: (DatasetFormat.RFT, DatasetFormat.CHAT),
}


class Datasets(ApiModel):
    training: DatasetSource
    validation: DatasetSource | None = None
    holdout: DatasetSource | None = Field(
        default=None,
        description="Hidden split for the EvalGate's task metrics; never read during training.",
    )


class AdapterType(StrEnum):
    FULL = "full"
    LORA = "lora"
    QLORA = "qlora"


class Adapter(ApiModel):
    type: AdapterType = AdapterType.LORA
    rank: Annotated[int, Field(ge=1, le=1024)] | None = Field(
        default=None, description="LoRA r (default 16)."
    )
    alpha: Annotated[float, Field(gt=0, le=4096)] | None = Field(
        default=None, description="Default 2 x rank."
    )
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] | None = Field(default=None, description="Default 0.05.")
    target_modules: Annotated[list[ShortText], Field(min_length=1, max_length=64)] | None = Field(
        default=None, description='Module names, or ["all-linear"] (the default).'
    )

    cel_rules = (
        Rule(
            "!has(self.type) || self.type != 'full' || "
            "!(has(self.rank) || has(self.alpha) || has(self.dropout) || has(self.targetModules))",
            "rank, alpha, dropout and targetModules apply only to lora and qlora adapters",
        ),
    )


class Hyperparameters(ApiModel):
    """`"auto"` values are resolved from the validated rows and the device (finetune_api.hyperparameters)."""

    epochs: Annotated[StrictInt | Literal["auto"], AutoNumber("integer", 1, 100)] = "auto"
    batch_size: Annotated[StrictInt | Literal["auto"], AutoNumber("integer", 1, 4096)] = "auto"
    learning_rate: Annotated[
        StrictFloat | Literal["auto"], AutoNumber("number", 0.0, 1.0, strict_lo=True)
    ] = "auto"
    learning_rate_multiplier: Annotated[
        StrictFloat | Literal["auto"], AutoNumber("number", 0.0, 100.0, strict_lo=True)
    ] = Field(default="auto", description="Scales the method's default learning rate (OpenAI style).")
    max_seq_length: Annotated[int, Field(ge=16, le=262144)] = 2048
    packing: bool = False
    warmup_ratio: Annotated[float, Field(ge=0.0, le=0.5)] = 0.03
    gradient_accumulation_steps: Annotated[StrictInt | Literal["auto"], AutoNumber("integer", 1, 1024)] = (
        Field(default="auto", description="Micro-batches per optimizer step; auto: what fits the device.")
    )
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 42

    # CEL cannot see the two untyped learning-rate fields; the schema says "not both" structurally.
    model_config = ConfigDict(
        json_schema_extra={"not": {"required": ["learningRate", "learningRateMultiplier"]}}
    )

    @model_validator(mode="after")
    def _one_learning_rate(self) -> Hyperparameters:
        if {"learning_rate", "learning_rate_multiplier"} <= self.model_fields_set:
            raise ValueError("set learningRate or learningRateMultiplier, not both")
        return self


class DpoSettings(ApiModel):
    beta: Annotated[float, Field(gt=0.0, le=10.0)] = 0.1
    loss_type: Literal[
        "sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "nca_pair", "apo_zero", "apo_down"
    ] = "sigmoid"
    label_smoothing: Annotated[float, Field(ge=0.0, lt=0.5)] = 0.0
    reference_model: ModelSource | None = Field(
        default=None, description="Frozen reference policy; the base model (adapter disabled) when unset."
    )

    cel_rules = (
        Rule(
            "!has(self.labelSmoothing) || self.labelSmoothing == 0.0 || "
            "!has(self.lossType) || self.lossType == 'sigmoid' || self.lossType == 'robust'",
            "labelSmoothing applies only to the sigmoid and robust loss types",
            field_path=".labelSmoothing",
        ),
    )


class RftSettings(ApiModel):
    grader: Grader
    generations_per_prompt: Annotated[int, Field(ge=2, le=64)] = 8
    max_completion_tokens: Annotated[int, Field(ge=1, le=32768)] = 512
    kl_coefficient: Annotated[float, Field(ge=0.0, le=10.0)] = 0.04
    temperature: Annotated[float, Field(gt=0.0, le=2.0)] = 1.0
    stop_strings: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=4)] = (
        Field(
            default_factory=list,
            description="A completion ends with the token that completes one of these (kept in the text the "
            "grader sees; no end-of-sequence token is added), else at the model's end-of-sequence token or "
            "maxCompletionTokens.",
        )
    )


class VisionSettings(ApiModel):
    task: Literal["chat", "image_classification"] = "chat"
    image_size: Annotated[int, Field(ge=16, le=4096)] | None = Field(
        default=None, description="Resize images to this square size; the processor's default when unset."
    )
    max_image_tokens: Annotated[int, Field(ge=1, le=16384)] | None = None
    labels: Annotated[list[ShortText], Field(min_length=2, max_length=10000)] | None = Field(
        default=None, description="Class names for image_classification; taken from the data when unset."
    )

    cel_rules = (
        Rule(
            "!has(self.labels) || (has(self.task) && self.task == 'image_classification')",
            "labels apply only to task image_classification",
            field_path=".labels",
        ),
    )


PiiKind = Literal["email", "phone", "credit_card", "national_id", "ip_address"]
DEFAULT_PII_KINDS: tuple[PiiKind, ...] = ("email", "phone", "credit_card", "national_id")


class PiiPolicy(ApiModel):
    action: Literal["Block", "Redact", "Warn", "Off"] = Field(
        default="Block", description="Block fails the gate on any finding; Redact masks them and goes on."
    )
    kinds: Annotated[list[PiiKind], Field(max_length=5)] = Field(
        default_factory=lambda: list(DEFAULT_PII_KINDS)
    )


ADVERSARIAL_SHARE = (0.1, 0.5)  # default (min, max)


class AdversarialBalance(ApiModel):
    """Share of rows tagged `metadata.adversarial: true` (red-team prompts with safe answers)."""

    min: Fraction = ADVERSARIAL_SHARE[0]
    max: Fraction = ADVERSARIAL_SHARE[1]

    cel_rules = (
        Rule(
            f"(has(self.min) ? self.min : {ADVERSARIAL_SHARE[0]}) <= "
            f"(has(self.max) ? self.max : {ADVERSARIAL_SHARE[1]})",
            "min must not exceed max",
        ),
    )


class PreferenceGates(ApiModel):
    drop_ties: bool = True
    drop_duplicate_pairs: bool = True
    max_synthetic_share: Fraction = Field(
        default=1.0, description="Cap on rows tagged metadata.synthetic: true; the excess is dropped."
    )
    adversarial_balance: AdversarialBalance | None = None


class DataGates(ApiModel):
    max_duplicate_rate: Fraction = Field(
        default=0.02,
        description=(
            "Exact and near duplicates within training, as a share of its rows. Within it they are dropped "
            "before training (the first of each kept); above it the data fails."
        ),
    )
    max_leakage_rate: Fraction = Field(
        default=0.0, description="Near-duplicates shared by training and validation/holdout."
    )
    min_rows: Annotated[int, Field(ge=1, le=10_000_000)] = 10
    pii: PiiPolicy = Field(default_factory=PiiPolicy)
    preference: PreferenceGates | None = None


EARLY_STOPPING_MIN_ROWS = 8
EARLY_STOPPING_MAX_ROWS = 256
EARLY_STOPPING_MIN_TRAINING = 4 * EARLY_STOPPING_MIN_ROWS


class EarlyStopping(ApiModel):
    """Stop when the held-out metric stops improving; on by default. Without `datasets.validation`, a
    seeded share of the training rows (after the data gates) is held out to watch."""

    enabled: bool = Field(default=True, description="false: train every step the hyperparameters give.")
    metric: Literal["eval_loss", "grader_score"] | None = Field(
        default=None,
        description="eval_loss (lower is better), or for rft grader_score: the grader's mean score on the "
        "held-out prompts (higher is better). Unset: grader_score for rft, eval_loss otherwise.",
    )
    patience: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=2, description="Evaluations in a row without an improvement of at least minDelta."
    )
    min_delta: Annotated[float, Field(ge=0.0)] = Field(
        default=0.01, description="The least change of the metric that counts as an improvement."
    )
    evaluations: Annotated[int, Field(ge=2, le=1000)] = Field(
        default=10,
        description="How many times a run evaluates (and saves a checkpoint), evenly spread, when "
        "checkpointing.saveSteps is unset; at least once an epoch.",
    )
    holdout_share: Annotated[float, Field(gt=0.0, le=0.5)] = Field(
        default=0.05,
        description="Without datasets.validation: the share of training rows held out to watch (seeded by "
        f"hyperparameters.seed), at least {EARLY_STOPPING_MIN_ROWS} and at most {EARLY_STOPPING_MAX_ROWS} "
        f"rows; with fewer than {EARLY_STOPPING_MIN_TRAINING} training rows nothing is held out and the run "
        "does not stop early.",
    )

    def held_out_rows(self, training_rows: int) -> int:
        """How many of `training_rows` are held out to watch when there is no validation file."""
        if not self.enabled or training_rows < EARLY_STOPPING_MIN_TRAINING:
            return 0
        count = round(self.holdout_share * training_rows)
        return min(EARLY_STOPPING_MAX_ROWS, max(EARLY_STOPPING_MIN_ROWS, count))

    def watched(self, method: Method) -> Literal["eval_loss", "grader_score"]:
        """The metric watched: the one set, else the method's."""
        return self.metric or ("grader_score" if method == Method.RFT else "eval_loss")


class Checkpointing(ApiModel):
    save_steps: Annotated[int, Field(ge=1, le=1_000_000)] | None = Field(
        default=None, description="Save every N optimizer steps; once per epoch when unset."
    )
    keep_last: Annotated[int, Field(ge=1, le=100)] = 3


class RunPolicy(ApiModel):
    """How long and how often to try. These may change while the job runs."""

    max_runtime: Duration | None = Field(
        default=None,
        description="Wall time from the first training pod start (status.startTime), e.g. 24h; time queued "
        "(Kueue) or suspended before that does not count. When reached, the pods are stopped and the job "
        "fails with MaxRuntimeExceeded; checkpoints are kept.",
    )
    retry_limit: Annotated[int, Field(ge=0, le=100)] = 3
    artifact_cleanup: Literal["Retain", "Delete"] = Field(
        default="Retain",
        description="On deletion: Delete removes staging checkpoints; promoted artifacts are never deleted.",
    )


def _format_rule(split: str) -> Rule:
    allowed = " || ".join(
        f"(self.method == '{method}' && self.datasets.{split}.format in "
        f"[{', '.join(repr(str(f)) for f in formats)}])"
        for method, formats in METHOD_FORMATS.items()
    )
    guard = f"!has(self.datasets.{split}) || " if split != "training" else ""
    return Rule(
        f"{guard}!has(self.datasets.{split}.format) || self.datasets.{split}.format == 'auto' || {allowed}",
        f"datasets.{split}.format does not fit the method: "
        + "; ".join(f"{m}: {', '.join(f.value for f in fs)}" for m, fs in METHOD_FORMATS.items()),
        field_path=f".datasets.{split}.format",
    )


class FineTuneJobSpec(ApiModel):
    method: Method
    base_model: ModelSource
    datasets: Datasets
    adapter: Adapter = Field(default_factory=Adapter)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    dpo: DpoSettings | None = None
    rft: RftSettings | None = None
    vision: VisionSettings | None = None
    data_gates: DataGates = Field(default_factory=DataGates)
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    checkpointing: Checkpointing = Field(default_factory=Checkpointing)
    resources: Resources = Field(default_factory=Resources)
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    image: Image | None = Field(
        default=None, description="Trainer image override; the operator's configured image when unset."
    )
    service_account_name: Name | None = Field(
        default=None,
        description="ServiceAccount the job's pods run as; the operator's trainer default when unset. While "
        "it is missing, no pod starts: condition ReferencesResolved False, reason ServiceAccountNotFound.",
    )
    storage: S3Storage
    eval_gate_ref: LocalObjectReference | None = Field(
        default=None, description="EvalGate in the same namespace that must pass before promotion."
    )
    output_uri: Uri | None = Field(default=None, description="Where a promoted model is published.")
    deployment: LocalObjectReference | None = Field(
        default=None,
        description="ModelDeployment in the same namespace that rolls the promoted version out (needs "
        "outputUri).",
    )
    suspend: bool = Field(
        default=False,
        description="true: the running Job of any phase (validation, training, evaluation, promotion) is "
        "suspended, its pods stopped, and none is started; phase Suspended, the Suspended condition naming "
        "what resumes. false: that same Job resumes; nothing that completed runs again.",
    )

    immutable_except: ClassVar[frozenset[str] | None] = frozenset({"suspend", "run_policy"})
    immutable_hint: ClassVar[str] = "only suspend and runPolicy may change; create a new FineTuneJob instead"
    cel_rules = (
        Rule("self.method == 'dpo' || !has(self.dpo)", "dpo settings require method dpo", field_path=".dpo"),
        Rule("self.method == 'rft' || !has(self.rft)", "rft settings require method rft", field_path=".rft"),
        Rule(
            "self.method != 'rft' || has(self.rft)",
            "method rft requires rft settings with a grader",
            field_path=".rft",
            reason="FieldValueRequired",
        ),
        Rule(
            "self.method == 'vision' || !has(self.vision)",
            "vision settings require method vision",
            field_path=".vision",
        ),
        Rule(
            "!has(self.vision) || !has(self.vision.task) || self.vision.task != 'image_classification' || "
            "!has(self.datasets.training.format) || self.datasets.training.format in ['auto', 'image_label']",
            "vision task image_classification trains on image_label data",
            field_path=".datasets.training.format",
        ),
        _format_rule("training"),
        _format_rule("validation"),
        _format_rule("holdout"),
        Rule(
            "!has(self.adapter) || !has(self.adapter.type) || self.adapter.type != 'qlora' || "
            "!has(self.resources) || !has(self.resources.gpusPerNode) || self.resources.gpusPerNode > 0",
            "qlora needs GPUs (4-bit quantization has no CPU kernels): set resources.gpusPerNode",
            field_path=".adapter.type",
        ),
        Rule(
            "!has(self.hyperparameters) || !has(self.hyperparameters.packing) || "
            "!self.hyperparameters.packing || self.method == 'sft'",
            "packing applies only to method sft",
            field_path=".hyperparameters.packing",
        ),
        Rule(
            "!has(self.dataGates) || !has(self.dataGates.preference) || self.method == 'dpo'",
            "dataGates.preference applies only to method dpo",
            field_path=".dataGates.preference",
        ),
        Rule(
            "!has(self.earlyStopping) || !has(self.earlyStopping.metric) || "
            "self.earlyStopping.metric != 'grader_score' || self.method == 'rft'",
            "earlyStopping.metric grader_score applies only to method rft",
            field_path=".earlyStopping.metric",
        ),
        Rule(
            "!has(self.deployment) || has(self.outputUri)",
            "deployment needs outputUri and evalGateRef: only a promoted version is rolled out",
            field_path=".deployment",
        ),
        Rule(
            "has(self.evalGateRef) == has(self.outputUri)",
            "evalGateRef and outputUri go together: promotion publishes to outputUri only after the gate",
            field_path=".outputUri",
        ),
    )


class FineTuneJob(ApiModel):
    """A fine-tuning run: validate data, train, evaluate against an EvalGate, promote if it passes."""

    api_version: Literal["finetune.dev/v1alpha1"] = "finetune.dev/v1alpha1"
    kind: Literal["FineTuneJob"] = "FineTuneJob"
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: FineTuneJobStatus = Field(default_factory=FineTuneJobStatus)

    cel_rules = (
        Rule(
            "size(self.metadata.name) <= 52",
            "metadata.name must be at most 52 characters: Jobs, Pods and Services append suffixes to it",
        ),
    )


FINETUNEJOB_CRD = CrdNames(
    kind="FineTuneJob",
    plural="finetunejobs",
    short_names=("ftj",),
    description=FineTuneJob.__doc__ or "",
    printer_columns=(
        PrinterColumn("Phase", ".status.phase"),
        PrinterColumn("Method", ".spec.method"),
        PrinterColumn("Progress", ".status.progress.summary"),
        PrinterColumn("Loss", ".status.progress.loss", type="number"),
        PrinterColumn("Gate", ".status.gate.verdict"),
        PrinterColumn("Verdict ID", ".status.gate.verdictId", priority=1),
        PrinterColumn("ETA", ".status.progress.remaining", priority=1),
        PrinterColumn("Attempts", ".status.attempts", type="integer", priority=1),
    ),
)
