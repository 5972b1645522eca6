"""Names and labels of everything the operator creates for a FineTuneJob."""

from __future__ import annotations

from typing import Any

from finetune_api.base import API_VERSION, GROUP
from finetune_api.v1alpha1 import FineTuneJob

MANAGER = "finetune-operator"
JOB_LABEL = f"{GROUP}/job"
COMPONENT_LABEL = "app.kubernetes.io/component"
ATTEMPT_LABEL = f"{GROUP}/attempt"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
FINALIZER = f"{GROUP}/cleanup"
# A ModelDeployment's children: which deployment and variant (stable, candidate) they serve, and the
# version a model server's pod template serves (an annotation: digests are longer than label values).
DEPLOYMENT_LABEL = f"{GROUP}/modeldeployment"
VARIANT_LABEL = f"{GROUP}/variant"
MODEL_DIGEST_ANNOTATION = f"{GROUP}/model-digest"

VALIDATE = "validate"
TRAIN = "train"
EVALUATE = "evaluate"
PROMOTE = "promote"
CONFIG = "config"


def config_name(name: str) -> str:
    return f"{name}-trainer"


def validation_job_name(name: str) -> str:
    return f"{name}-validate"


def training_job_name(name: str, attempt: int) -> str:
    return f"{name}-train-{attempt}"


def evaluation_job_name(name: str) -> str:
    return f"{name}-evaluate"


def promotion_job_name(name: str) -> str:
    return f"{name}-promote"


def service_name(name: str) -> str:
    return f"{name}-train"


def labels(job: FineTuneJob, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "finetune-trainer",
        "app.kubernetes.io/instance": job.metadata.name,
        COMPONENT_LABEL: component,
        "app.kubernetes.io/part-of": "finetune-operator",
        "app.kubernetes.io/managed-by": MANAGER,
        JOB_LABEL: job.metadata.name,
    }


def owner_reference(job: FineTuneJob) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "FineTuneJob",
        "name": job.metadata.name,
        "uid": job.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(
    job: FineTuneJob, name: str, component: str, extra: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": job.metadata.namespace,
        "labels": {**labels(job, component), **(extra or {})},
        "ownerReferences": [owner_reference(job)],
    }
