"""The trainer's ConfigMap and the Jobs of a run: validation (CPU only), training (with a headless Service
for multi-node), evaluation against the EvalGate, and promotion.

The trainer reads its contract from CONFIG_PATH. Training mounts it from the ConfigMap; validation, which
runs before hyperparameters can be resolved, carries its own contract in a pod annotation projected to
the same path (downward API), so the ConfigMap is written once, complete. Evaluation and promotion do the
same: their contracts add the gate and the candidate checkpoint to the training one.

Every pod runs restricted: non-root, no privilege escalation, all capabilities dropped, read-only root
filesystem with writable scratch volumes, seccomp RuntimeDefault. S3 credentials come from the Secret the
spec references, as environment variables; the ConfigMap holds only the trainer contract, which has no
secrets in it.
"""

from __future__ import annotations

import json
from typing import Any

from finetune_api.base import GROUP, parse_duration
from finetune_api.trainer_config import (
    CONFIG_PATH,
    ENV_ACCESS_KEY_ID,
    ENV_METRICS_PORT,
    ENV_SECRET_ACCESS_KEY,
    METRICS_PORT,
    EvaluateContract,
    PromoteContract,
    RunContract,
    TrainContract,
    ValidateContract,
)
from finetune_api.v1alpha1 import FineTuneJob
from finetune_api.v1alpha1.common import Resources, S3Storage
from finetune_operator.builders.names import (
    ATTEMPT_LABEL,
    CONFIG,
    EVALUATE,
    PROMOTE,
    QUEUE_LABEL,
    TRAIN,
    VALIDATE,
    config_name,
    evaluation_job_name,
    metadata,
    promotion_job_name,
    service_name,
    training_job_name,
    validation_job_name,
)
from finetune_operator.settings import Settings

Manifest = dict[str, Any]

CONFIG_KEY = "trainer.json"
CONFIG_DIR = CONFIG_PATH.rsplit("/", 1)[0]
SCRATCH = "/scratch"
RENDEZVOUS_PORT = 29500
UID = 1000


def config_map(job: FineTuneJob, contract: TrainContract) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(job, config_name(job.metadata.name), CONFIG),
        "data": {CONFIG_KEY: json.dumps(contract.dump(), indent=2, sort_keys=True)},
    }


def _env(job: FineTuneJob) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "FINETUNE_CONFIG", "value": CONFIG_PATH},
        {"name": "HOME", "value": f"{SCRATCH}/home"},
        {"name": "HF_HOME", "value": f"{SCRATCH}/huggingface"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "TMPDIR", "value": "/tmp"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    return env + storage_env(job.spec.storage)


def storage_env(storage: S3Storage) -> list[dict[str, Any]]:
    """How a pod reaches S3: endpoint and region, and the referenced Secret's keys as AWS_* variables."""
    env: list[dict[str, Any]] = []
    if storage.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL_S3", "value": storage.endpoint})
    if storage.region:
        env.append({"name": "AWS_DEFAULT_REGION", "value": storage.region})
    secret = storage.credentials_secret_ref
    if secret is not None:
        for var, key in (
            (ENV_ACCESS_KEY_ID, secret.access_key_id_key),
            (ENV_SECRET_ACCESS_KEY, secret.secret_access_key_key),
        ):
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": key}}})
    return env


CONTRACT_ANNOTATION = f"{GROUP}/trainer-config"


def _pod_spec(
    job: FineTuneJob,
    settings: Settings,
    *,
    command: list[str],
    resources: dict[str, Any],
    extra_env: list[dict[str, Any]] | None = None,
    shared_memory: bool = False,
    contract_in_annotation: bool = False,
) -> dict[str, Any]:
    if contract_in_annotation:
        source: dict[str, Any] = {
            "downwardAPI": {
                "items": [
                    {
                        "path": CONFIG_KEY,
                        "fieldRef": {"fieldPath": f"metadata.annotations['{CONTRACT_ANNOTATION}']"},
                    }
                ]
            }
        }
    else:
        source = {"configMap": {"name": config_name(job.metadata.name)}}
    volumes: list[dict[str, Any]] = [
        {"name": "config", **source},
        {"name": "scratch", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "scratch", "mountPath": SCRATCH},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if shared_memory:  # torch data loaders and NCCL need more /dev/shm than the runtime's 64 MiB
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "trainer",
                "image": job.spec.image or settings.trainer_image,
                "command": command,
                "env": [*_env(job), *(extra_env or [])],
                "resources": resources,
                "volumeMounts": mounts,
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "runAsNonRoot": True,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
        "volumes": volumes,
    }
    service_account = job.spec.service_account_name or settings.trainer_service_account
    if service_account:
        spec["serviceAccountName"] = service_account
    if job.spec.resources.priority_class_name:
        spec["priorityClassName"] = job.spec.resources.priority_class_name
    return spec


def _job(
    job: FineTuneJob,
    name: str,
    component: str,
    pod: dict[str, Any],
    *,
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> Manifest:
    meta = metadata(job, name, component, spec.pop("extra_labels", None))
    template_meta: dict[str, Any] = {"labels": dict(meta["labels"])}
    if annotations:
        template_meta["annotations"] = annotations
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": 0,  # retries are the operator's: each attempt resumes from a checkpoint
            **spec,
            "template": {"metadata": template_meta, "spec": pod},
        },
    }


def validation_job(job: FineTuneJob, settings: Settings, contract: ValidateContract) -> Manifest:
    """CPU only: the data gates run before any GPU is requested. The contract (without hyperparameters,
    which need the row count this Job finds) travels in the pod's annotation."""
    pod = _cpu_pod(job, settings, "validate-data")
    return _job(job, validation_job_name(job.metadata.name), VALIDATE, pod, annotations=_annotated(contract))


def _cpu_pod(job: FineTuneJob, settings: Settings, command: str) -> dict[str, Any]:
    """A pod for a trainer command that needs no GPU, with the contract in its annotation."""
    return _pod_spec(
        job,
        settings,
        command=["python", "-m", "finetune_trainer", command, "--config", CONFIG_PATH],
        resources={
            "requests": {"cpu": settings.validation_cpu, "memory": settings.validation_memory},
            "limits": {"memory": settings.validation_memory},
        },
        contract_in_annotation=True,
    )


def _resources(res: Resources) -> dict[str, Any]:
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if res.cpu:
        requests["cpu"] = res.cpu
    if res.memory:
        requests["memory"] = limits["memory"] = res.memory
    if res.gpus_per_node:
        requests[res.gpu_resource_name] = limits[res.gpu_resource_name] = res.gpus_per_node
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def _annotated(contract: RunContract) -> dict[str, str]:
    return {CONTRACT_ANNOTATION: json.dumps(contract.dump(), sort_keys=True)}


def evaluation_job(
    job: FineTuneJob, settings: Settings, contract: EvaluateContract, *, image: str | None = None
) -> Manifest:
    """Scores the candidate (and the baseline) on every suite of the gate, with the gate's resources and
    its `evaluation.timeout` as the Job's deadline. No retries: a crashed evaluation fails the gate."""
    runtime = contract.evaluation.gate.evaluation
    pod = _pod_spec(
        job,
        settings,
        command=["python", "-m", "finetune_trainer", "evaluate", "--config", CONFIG_PATH],
        resources=_resources(runtime.resources),
        shared_memory=True,
        contract_in_annotation=True,
    )
    if image or runtime.image:
        pod["containers"][0]["image"] = image or runtime.image
    deadline = max(1, int(parse_duration(runtime.timeout)))
    name = evaluation_job_name(job.metadata.name)
    return _job(job, name, EVALUATE, pod, annotations=_annotated(contract), activeDeadlineSeconds=deadline)


PROMOTION_RETRIES = 3


def promotion_job(job: FineTuneJob, settings: Settings, contract: PromoteContract) -> Manifest:
    """CPU only: copies the checkpoint (server-side where it can) and writes the manifest last. Publishing
    is idempotent until the manifest exists, so a pod that fails (S3 unreachable mid-copy) is retried."""
    pod = _cpu_pod(job, settings, "promote")
    name = promotion_job_name(job.metadata.name)
    return _job(job, name, PROMOTE, pod, annotations=_annotated(contract), backoffLimit=PROMOTION_RETRIES)


def _training_command(job: FineTuneJob) -> list[str]:
    res = job.spec.resources
    train = ["-m", "finetune_trainer", "train", "--config", CONFIG_PATH]
    if res.nodes > 1:
        return [
            "torchrun",
            "--nnodes=$(NNODES)",
            "--nproc-per-node=$(NPROC_PER_NODE)",
            "--node-rank=$(NODE_RANK)",
            "--master-addr=$(MASTER_ADDR)",
            "--master-port=$(MASTER_PORT)",
            *train,
        ]
    if res.gpus_per_node > 1:
        return ["torchrun", "--standalone", f"--nproc-per-node={res.gpus_per_node}", *train]
    return ["python", *train]


def _rendezvous_env(job: FineTuneJob, job_name: str) -> list[dict[str, Any]]:
    res = job.spec.resources
    index = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    return [
        {"name": "MASTER_ADDR", "value": f"{job_name}-0.{service_name(job.metadata.name)}"},
        {"name": "MASTER_PORT", "value": str(RENDEZVOUS_PORT)},
        {"name": "NNODES", "value": str(res.nodes)},
        {"name": "NPROC_PER_NODE", "value": str(max(res.gpus_per_node, 1))},
        {"name": "WORLD_SIZE", "value": str(res.nodes * max(res.gpus_per_node, 1))},
        {"name": "NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": index}}},
    ]


def training_job(
    job: FineTuneJob, settings: Settings, *, attempt: int, active_deadline_seconds: int | None
) -> Manifest:
    """One attempt. Multi-node: an Indexed Job whose pod 0 is the torchrun rendezvous master, reached
    through the headless Service. With a Kueue queue the Job is created suspended for Kueue to admit."""
    res = job.spec.resources
    name = training_job_name(job.metadata.name, attempt)
    resources = _resources(res)
    multi_node = res.nodes > 1
    pod = _pod_spec(
        job,
        settings,
        command=_training_command(job),
        resources=resources,
        extra_env=_rendezvous_env(job, name) if multi_node else None,
        shared_memory=True,
    )
    (container,) = pod["containers"]
    container["env"].append({"name": ENV_METRICS_PORT, "value": str(METRICS_PORT)})
    container["ports"] = [{"name": "metrics", "containerPort": METRICS_PORT}]  # rank 0 serves
    if res.node_selector:
        pod["nodeSelector"] = dict(res.node_selector)
    if res.tolerations:
        pod["tolerations"] = [t.dump() for t in res.tolerations]
    if res.affinity:
        pod["affinity"] = res.affinity.dump()
    extra_labels = {ATTEMPT_LABEL: str(attempt)}
    if res.queue_name:
        extra_labels[QUEUE_LABEL] = res.queue_name
    spec: dict[str, Any] = {
        "extra_labels": extra_labels,
        "completions": res.nodes,
        "parallelism": res.nodes,
        "suspend": bool(res.queue_name) or job.spec.suspend,
    }
    if multi_node:
        spec["completionMode"] = "Indexed"
        pod["subdomain"] = service_name(job.metadata.name)
    if active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = max(1, active_deadline_seconds)
    return _job(job, name, TRAIN, pod, **spec)


def headless_service(job: FineTuneJob) -> Manifest:
    """Gives each pod of a multi-node attempt a stable DNS name (<job>-<index>.<service>)."""
    meta = metadata(job, service_name(job.metadata.name), TRAIN)
    selector = {k: v for k, v in meta["labels"].items() if k != "app.kubernetes.io/managed-by"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "clusterIP": "None",
            "selector": selector,
            "publishNotReadyAddresses": True,  # rendezvous happens before any pod is Ready
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
        },
    }
