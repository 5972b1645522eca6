"""What serves a ModelDeployment: per variant (stable, candidate) a ConfigMap with the model server's
contract, a Deployment running `python -m finetune_trainer serve`, and a Service; and one HTTPRoute that
splits the traffic between the two Services by weight and mirrors a share of it to the candidate.

Every manifest is a function of (ModelDeployment, the version a variant serves, the route's weights and
mirror): re-building it from the same status gives the same object, so server-side apply after an operator
restart changes nothing. Names are fixed per variant (`<name>-stable`, `<name>-candidate`), so the variant a
server reports in its metrics is its role: promotion moves the stable Deployment to the candidate's
version. The contract reaches the server as an environment variable from its ConfigMap key; the pod
template carries the contract's hash, so a changed contract rolls the pods.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from finetune_api.base import API_VERSION, GROUP
from finetune_api.serving import (
    ENV_SERVE_CONTRACT,
    SERVE_COMMAND,
    Grading,
    ServeContract,
    ServeStorage,
    Variant,
)
from finetune_api.v1alpha1 import ModelDeployment
from finetune_api.v1alpha1.modeldeployment import ServedModel
from finetune_operator.builders.names import (
    DEPLOYMENT_LABEL,
    MANAGER,
    MODEL_DIGEST_ANNOTATION,
    VARIANT_LABEL,
)
from finetune_operator.builders.workloads import storage_env
from finetune_operator.settings import Settings

Manifest = dict[str, Any]

CONTRACT_HASH_ANNOTATION = f"{GROUP}/contract-hash"
CONTRACT_KEY = "serve.json"
GATEWAY_API = "gateway.networking.k8s.io/v1"
UID = 1000


def server_name(deployment: str, variant: Variant) -> str:
    """The Deployment and Service of a variant."""
    return f"{deployment}-{variant}"


def contract_name(deployment: str, variant: Variant) -> str:
    return f"{deployment}-{variant}-serve"


def route_name(deployment: str) -> str:
    return deployment


def capture_uri(mdep: ModelDeployment) -> str:
    storage = mdep.spec.storage
    return f"s3://{storage.bucket}/{storage.prefix}{mdep.metadata.namespace}/{mdep.metadata.name}/captures/"


def selector(mdep: ModelDeployment, variant: Variant) -> dict[str, str]:
    return {DEPLOYMENT_LABEL: mdep.metadata.name, VARIANT_LABEL: variant}


def _labels(mdep: ModelDeployment, variant: Variant | None) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": "finetune-model-server",
        "app.kubernetes.io/instance": mdep.metadata.name,
        "app.kubernetes.io/part-of": "finetune-operator",
        "app.kubernetes.io/managed-by": MANAGER,
        DEPLOYMENT_LABEL: mdep.metadata.name,
    }
    if variant is not None:
        labels[VARIANT_LABEL] = variant
    return labels


def _metadata(mdep: ModelDeployment, name: str, variant: Variant | None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": mdep.metadata.namespace,
        "labels": _labels(mdep, variant),
        "ownerReferences": [
            {
                "apiVersion": API_VERSION,
                "kind": "ModelDeployment",
                "name": mdep.metadata.name,
                "uid": mdep.metadata.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }


def contract(mdep: ModelDeployment, variant: Variant, model: ServedModel) -> ServeContract:
    spec = mdep.spec
    shadow = spec.rollout.shadow
    grading = Grading(checks=shadow.checks) if shadow is not None and variant == "candidate" else None
    return ServeContract(
        namespace=mdep.metadata.namespace or "",
        deployment=mdep.metadata.name,
        variant=variant,
        model=model,
        base_model_uri=spec.base_model_uri,
        storage=ServeStorage(
            endpoint=spec.storage.endpoint,
            region=spec.storage.region,
            force_path_style=spec.storage.force_path_style,
        ),
        capture_uri=capture_uri(mdep) if shadow is not None else None,
        grading=grading,
        max_batch_size=spec.serving.max_batch_size,
        max_new_tokens=spec.serving.max_new_tokens,
    )


def _contract_json(mdep: ModelDeployment, variant: Variant, model: ServedModel) -> str:
    return json.dumps(contract(mdep, variant, model).dump(), indent=2, sort_keys=True)


def config_map(mdep: ModelDeployment, variant: Variant, model: ServedModel) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(mdep, contract_name(mdep.metadata.name, variant), variant),
        "data": {CONTRACT_KEY: _contract_json(mdep, variant, model)},
    }


def _env(mdep: ModelDeployment, variant: Variant) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {
            "name": ENV_SERVE_CONTRACT,
            "valueFrom": {
                "configMapKeyRef": {"name": contract_name(mdep.metadata.name, variant), "key": CONTRACT_KEY}
            },
        },
        {"name": "HOME", "value": "/scratch/home"},
        {"name": "HF_HOME", "value": "/scratch/huggingface"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "TMPDIR", "value": "/tmp"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    return env + storage_env(mdep.spec.storage)


def _resources(mdep: ModelDeployment) -> dict[str, Any]:
    wanted = mdep.spec.serving.resources
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if wanted.cpu:
        requests["cpu"] = wanted.cpu
    if wanted.memory:
        requests["memory"] = limits["memory"] = wanted.memory
    if wanted.gpus:
        requests[wanted.gpu_resource_name] = limits[wanted.gpu_resource_name] = wanted.gpus
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def deployment(mdep: ModelDeployment, variant: Variant, model: ServedModel, settings: Settings) -> Manifest:
    serving = mdep.spec.serving
    contract_hash = hashlib.sha256(_contract_json(mdep, variant, model).encode()).hexdigest()[:16]
    container: dict[str, Any] = {
        "name": "server",
        "image": serving.image or settings.trainer_image,
        "command": list(SERVE_COMMAND),
        "args": ["--host", "$(POD_IP)", "--port", str(serving.port)],
        "env": _env(mdep, variant),
        "ports": [{"name": "http", "containerPort": serving.port, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": 2,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "initialDelaySeconds": 600,  # loading a large model from S3 takes a while
            "periodSeconds": 20,
        },
        "resources": _resources(mdep),
        "volumeMounts": [
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    pod: dict[str, Any] = {
        "containers": [container],
        "volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
        "securityContext": {"fsGroup": UID},
        "enableServiceLinks": False,
    }
    wanted = serving.resources
    if wanted.node_selector:
        pod["nodeSelector"] = dict(wanted.node_selector)
    if wanted.tolerations:
        pod["tolerations"] = [t.dump() for t in wanted.tolerations]
    if serving.service_account_name:
        pod["serviceAccountName"] = serving.service_account_name
    labels = _labels(mdep, variant)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(mdep, server_name(mdep.metadata.name, variant), variant),
        "spec": {
            "replicas": serving.replicas,
            "selector": {"matchLabels": selector(mdep, variant)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        MODEL_DIGEST_ANNOTATION: model.digest,
                        CONTRACT_HASH_ANNOTATION: contract_hash,
                    },
                },
                "spec": pod,
            },
        },
    }


def service(mdep: ModelDeployment, variant: Variant) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(mdep, server_name(mdep.metadata.name, variant), variant),
        "spec": {
            "selector": selector(mdep, variant),
            "ports": [
                {"name": "http", "port": mdep.spec.serving.port, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def server(mdep: ModelDeployment, variant: Variant, model: ServedModel, settings: Settings) -> list[Manifest]:
    """Everything one variant needs, in the order to apply it (the contract before its readers)."""
    return [
        config_map(mdep, variant, model),
        service(mdep, variant),
        deployment(mdep, variant, model, settings),
    ]


def server_objects(mdep: ModelDeployment, variant: Variant) -> list[tuple[str, str]]:
    """(kind, name) of what `server` builds, to delete a variant."""
    name = mdep.metadata.name
    return [
        ("Deployment", server_name(name, variant)),
        ("Service", server_name(name, variant)),
        ("ConfigMap", contract_name(name, variant)),
    ]


def http_route(
    mdep: ModelDeployment, candidate_weight: int, mirror_percent: int, candidate: bool
) -> Manifest:
    """The route: stable at 100 - candidate_weight, the candidate (when it has a Service) at its weight,
    and a RequestMirror of `mirror_percent` of the requests to the candidate."""
    gateway = mdep.spec.gateway
    port = mdep.spec.serving.port
    name = mdep.metadata.name
    backends: list[dict[str, Any]] = [
        {"name": server_name(name, "stable"), "port": port, "weight": 100 - candidate_weight}
    ]
    if candidate:
        backends.append({"name": server_name(name, "candidate"), "port": port, "weight": candidate_weight})
    rule: dict[str, Any] = {
        "matches": [{"path": {"type": "PathPrefix", "value": gateway.path_prefix}}],
        "backendRefs": backends,
    }
    if candidate and mirror_percent > 0:
        rule["filters"] = [
            {
                "type": "RequestMirror",
                "requestMirror": {
                    "backendRef": {"name": server_name(name, "candidate"), "port": port},
                    "percent": mirror_percent,
                },
            }
        ]
    spec: dict[str, Any] = {"parentRefs": [p.dump() for p in gateway.parent_refs], "rules": [rule]}
    if gateway.hostnames:
        spec["hostnames"] = list(gateway.hostnames)
    return {
        "apiVersion": GATEWAY_API,
        "kind": "HTTPRoute",
        "metadata": _metadata(mdep, route_name(name), None),
        "spec": spec,
    }
