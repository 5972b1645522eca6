"""finetune.dev/v1alpha1: FineTuneJob and EvalGate."""

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

RESOURCES: tuple[tuple[type[BaseModel], CrdNames], ...] = (
    (FineTuneJob, FINETUNEJOB_CRD),
    (EvalGate, EVALGATE_CRD),
)
KINDS: dict[str, type[BaseModel]] = {names.kind: model for model, names in RESOURCES}

__all__ = [
    "EVALGATE_CRD",
    "FINETUNEJOB_CRD",
    "KINDS",
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
    "ModelSource",
    "Phase",
    "Reason",
    "Resources",
    "S3Storage",
    "Suite",
]
