"""finetune.dev/v1alpha1: FineTuneJob, EvalGate and ModelDeployment."""

from __future__ import annotations

from pydantic import BaseModel

from finetune_api.base import CrdNames
from finetune_api.v1alpha1.common import DatasetFormat, DatasetSource, ModelSource, Resources, S3Storage
from finetune_api.v1alpha1.conditions import Condition, ConditionType, Phase, Reason
from finetune_api.v1alpha1.evalgate import EVALGATE_CRD, EvalGate, EvalGateSpec, EvalGateStatus, Metric, Suite
from finetune_api.v1alpha1.finetunejob import (
    FINETUNEJOB_CRD,
    AdapterType,
    FineTuneJob,
    FineTuneJobSpec,
    Method,
)
from finetune_api.v1alpha1.finetunejob_status import FineTuneJobStatus
from finetune_api.v1alpha1.graders import Grader
from finetune_api.v1alpha1.modeldeployment import MODELDEPLOYMENT_CRD, ModelDeployment, ModelDeploymentSpec
from finetune_api.v1alpha1.modeldeployment_status import ModelDeploymentStatus, RolloutStage

RESOURCES: tuple[tuple[type[BaseModel], CrdNames], ...] = (
    (FineTuneJob, FINETUNEJOB_CRD),
    (EvalGate, EVALGATE_CRD),
    (ModelDeployment, MODELDEPLOYMENT_CRD),
)
KINDS: dict[str, type[BaseModel]] = {names.kind: model for model, names in RESOURCES}

__all__ = [
    "EVALGATE_CRD",
    "FINETUNEJOB_CRD",
    "KINDS",
    "MODELDEPLOYMENT_CRD",
    "RESOURCES",
    "AdapterType",
    "Condition",
    "ConditionType",
    "DatasetFormat",
    "DatasetSource",
    "EvalGate",
    "EvalGateSpec",
    "EvalGateStatus",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "Grader",
    "Method",
    "Metric",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "ModelSource",
    "Phase",
    "Reason",
    "Resources",
    "RolloutStage",
    "S3Storage",
    "Suite",
]
