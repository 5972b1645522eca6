"""The trainer contract: the resolved configuration a trainer pod receives.

The operator renders it into a ConfigMap (mounted at `CONFIG_PATH`); `finetune run` builds the same object
locally. Everything here is concrete: no "auto", no Secret values (credentials arrive as environment
variables from the referenced Secret), every location a full URI. Bump `CONTRACT_VERSION` on any change a
trainer of the previous version could not read.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from finetune_api.base import ApiModel, Name, ShortText, Uri
from finetune_api.hyperparameters import Resolved
from finetune_api.v1alpha1.common import DatasetSource, ModelSource
from finetune_api.v1alpha1.evalgate import EvalGateSpec
from finetune_api.v1alpha1.finetunejob import (
    Adapter,
    Approval,
    Checkpointing,
    DataGates,
    DpoSettings,
    EarlyStopping,
    FineTuneJob,
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


class TrainerConfig(ApiModel):
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
    hyperparameters: ResolvedHyperparameters | None = Field(
        default=None, description="Absent for validate-data, which runs before the row count is known."
    )
    dpo: DpoSettings | None = None
    rft: RftSettings | None = None
    vision: VisionSettings | None = None
    data_gates: DataGates
    early_stopping: EarlyStopping | None = None
    checkpointing: Checkpointing
    storage: StorageTarget
    distributed: Distributed = Field(default_factory=Distributed)
    evaluation: EvaluationTarget | None = Field(default=None, description="Set for evaluate only.")
    promotion: PromotionTarget | None = Field(default=None, description="Set for promote only.")


def staging_uri(job: FineTuneJob, run_id: str) -> str:
    storage = job.spec.storage
    namespace = job.metadata.namespace or "default"
    return f"s3://{storage.bucket}/{storage.prefix}{namespace}/{job.metadata.name}/{run_id}/"


def version_uri(job: FineTuneJob, run_id: str) -> str:
    """Where the run's promoted model goes: a version of its own under outputUri."""
    output = job.spec.output_uri or ""
    return f"{output.rstrip('/')}/{run_id}/"


def build_trainer_config(job: FineTuneJob, *, run_id: str, resolved: Resolved | None) -> TrainerConfig:
    """The contract for one run of `job`: with "auto" hyperparameters resolved for training, or without
    hyperparameters (`resolved=None`) for data validation."""
    spec = job.spec
    hp = spec.hyperparameters
    return TrainerConfig(
        run_id=run_id,
        job_name=job.metadata.name,
        namespace=job.metadata.namespace or "default",
        job_uid=job.metadata.uid,
        method=spec.method,
        base_model=spec.base_model,
        training=spec.datasets.training,
        validation=spec.datasets.validation,
        holdout=spec.datasets.holdout,
        adapter=spec.adapter,
        hyperparameters=None
        if resolved is None
        else ResolvedHyperparameters(
            epochs=resolved.epochs,
            batch_size=resolved.batch_size,
            learning_rate=resolved.learning_rate,
            max_seq_length=hp.max_seq_length,
            packing=hp.packing,
            warmup_ratio=hp.warmup_ratio,
            gradient_accumulation_steps=hp.gradient_accumulation_steps,
            weight_decay=hp.weight_decay,
            seed=hp.seed,
        ),
        dpo=spec.dpo,
        rft=spec.rft,
        vision=spec.vision,
        data_gates=spec.data_gates,
        early_stopping=spec.early_stopping,
        checkpointing=spec.checkpointing,
        storage=StorageTarget(
            endpoint=spec.storage.endpoint,
            region=spec.storage.region,
            force_path_style=spec.storage.force_path_style,
            staging_uri=staging_uri(job, run_id),
            output_uri=spec.output_uri,
        ),
        distributed=(Distributed(nodes=spec.resources.nodes, gpus_per_node=spec.resources.gpus_per_node)),
    )
