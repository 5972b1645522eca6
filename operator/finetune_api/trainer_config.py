"""The trainer contract: what each trainer command receives, one type per command.

    validate-data   ValidateContract   the run's identity, data, gates and storage (no row count yet)
    train           TrainContract      ... plus the resolved hyperparameters (also read by score-holdout)
    evaluate        EvaluateContract   ... plus the candidate checkpoint, the baseline and the EvalGate
    promote         PromoteContract    ... plus the verdict, the approval and the version to publish

Each type carries exactly what its command needs, so no command reads a field only another one fills.
`finetune_api.plan.RunPlan` builds them all; the operator renders them into a ConfigMap or a pod annotation
(mounted at `CONFIG_PATH`), `finetune run` into local files. Everything here is concrete: no "auto", no
Secret values (credentials arrive as environment variables from the referenced Secret), every location a
full URI. Bump `CONTRACT_VERSION` on any change a trainer of the previous version could not read.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from finetune_api.base import ApiModel, Name, ShortText, Uri
from finetune_api.run_layout import StagingLayout
from finetune_api.v1alpha1.common import DatasetSource, ModelSource
from finetune_api.v1alpha1.evalgate import EvalGateSpec
from finetune_api.v1alpha1.finetunejob import (
    Adapter,
    Approval,
    Checkpointing,
    DataGates,
    DpoSettings,
    EarlyStopping,
    GateResult,
    Method,
    RftSettings,
    VisionSettings,
)

CONTRACT_VERSION = 1
CONFIG_PATH = "/etc/finetune/trainer.json"
# Environment variables a trainer reads besides the config file.
ENV_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
ENV_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"
ENV_METRICS_PORT = "FINETUNE_METRICS_PORT"  # the trainer's Prometheus endpoint (docs/metrics.md)
METRICS_PORT = 9400  # what training pods serve on: container port `metrics`


class ResolvedHyperparameters(ApiModel):
    epochs: Annotated[int, Field(ge=1)]
    batch_size: Annotated[int, Field(ge=1)]
    learning_rate: Annotated[float, Field(gt=0.0)]
    max_seq_length: int
    packing: bool
    warmup_ratio: float
    gradient_accumulation_steps: int
    weight_decay: float
    seed: int


class StorageTarget(ApiModel):
    endpoint: str | None = None
    region: str | None = None
    force_path_style: bool = True
    staging_uri: Uri = Field(description="s3://bucket/prefix/<namespace>/<name>/<runId>/ for this run.")
    output_uri: Uri | None = None


class Distributed(ApiModel):
    nodes: Annotated[int, Field(ge=1)] = 1
    gpus_per_node: Annotated[int, Field(ge=0)] = 0


class EvaluationTarget(ApiModel):
    """What `evaluate` scores: the candidate checkpoint, and the baseline where a metric compares, on
    every suite of the gate."""

    gate_name: Name
    gate: EvalGateSpec
    checkpoint_uri: Uri
    checkpoint_step: Annotated[int, Field(ge=0)]
    baseline: ModelSource = Field(description="The job's base model, or the gate's baseline model.")


class PromotionTarget(ApiModel):
    """What `promote` publishes: the checkpoint the gate passed, to its own version under outputUri."""

    checkpoint_uri: Uri
    checkpoint_step: Annotated[int, Field(ge=0)]
    version_uri: Uri = Field(
        description="<outputUri>/<runId>/: one version per FineTuneJob, never rewritten."
    )
    gate_name: Name
    gate: GateResult
    approval: Approval | None = None


class RunContract(ApiModel):
    """What every trainer command reads: who the run is, its data and settings, and where it stages."""

    contract_version: Literal[1] = 1
    run_id: ShortText
    job_name: Name
    namespace: Name
    job_uid: ShortText | None = None
    method: Method
    base_model: ModelSource
    training: DatasetSource
    validation: DatasetSource | None = None
    holdout: DatasetSource | None = None
    adapter: Adapter
    dpo: DpoSettings | None = None
    rft: RftSettings | None = None
    vision: VisionSettings | None = None
    data_gates: DataGates
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    checkpointing: Checkpointing
    storage: StorageTarget
    distributed: Distributed = Field(default_factory=Distributed)

    @property
    def layout(self) -> StagingLayout:
        return StagingLayout(self.storage.staging_uri)


class ValidateContract(RunContract):
    """`validate-data`: runs before the row count is known, so it has no hyperparameters."""


class TrainContract(RunContract):
    """`train` and `score-holdout`: hyperparameters resolved from the validated row count."""

    hyperparameters: ResolvedHyperparameters


class EvaluateContract(TrainContract):
    """`evaluate`: the training contract and what to score on which suites."""

    evaluation: EvaluationTarget


class PromoteContract(TrainContract):
    """`promote`: the training contract and what to publish where."""

    promotion: PromotionTarget
