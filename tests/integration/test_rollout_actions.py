"""Manual rollout actions on the real API server, with client-certificate users: the generated policy
(crds/admission/rollout-policy.yaml, applied after the CRDs) lets a user set `rollout-action-by` only to
their own name, only to a known action, and lets anyone remove both (the operator does, once it acted)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from helpers.kube import Cluster

NAMESPACE = "rollout-actions"
NAME = "assistant"
ACTION, BY = "finetune.dev/rollout-action", "finetune.dev/rollout-action-by"
DIGEST = "sha256:" + "a" * 64


def modeldeployment() -> dict[str, object]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "model": {"uri": "s3://models/assistant/v1/", "digest": DIGEST},
            "gateway": {"parentRefs": [{"name": "public"}]},
            "storage": {"bucket": "models"},
            "prometheus": {"address": "http://prometheus.monitoring:9090"},
        },
    }


@pytest.fixture(scope="module")
def users(cluster: Cluster) -> dict[str, Path]:
    """alice and bob may both edit ModelDeployments in the namespace."""
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    rbac = f"""
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: mdep-editor, namespace: {NAMESPACE}}}
rules:
- apiGroups: [finetune.dev]
  resources: [modeldeployments]
  verbs: [get, list, watch, create, update, patch, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: mdep-editors, namespace: {NAMESPACE}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: mdep-editor}}
subjects:
- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}}
- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}}
"""
    cluster.kubectl("apply", "-f", "-", stdin=rbac)
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(modeldeployment()))
    plane = cluster.plane
    return {"alice": plane.user_kubeconfig("alice"), "bob": plane.user_kubeconfig("bob")}


def annotate(cluster: Cluster, kubeconfig: Path, *pairs: str) -> subprocess.CompletedProcess[str]:
    return cluster.plane.kubectl(
        "annotate", "--overwrite", "mdep", NAME, "-n", NAMESPACE, *pairs, kubeconfig=kubeconfig
    )


def annotations(cluster: Cluster) -> dict[str, str]:
    body = yaml.safe_load(cluster.kubectl("get", "mdep", NAME, "-n", NAMESPACE, "-o", "yaml").stdout)
    return dict(body["metadata"].get("annotations") or {})


def test_an_action_carries_its_requesters_own_name(cluster: Cluster, users: dict[str, Path]) -> None:
    alice, bob = users["alice"], users["bob"]

    refused = annotate(cluster, bob, f"{ACTION}=abort", f"{BY}=alice")
    assert refused.returncode != 0
    assert "rollout-action-by must be your own user name (bob)" in refused.stderr
    assert ACTION not in annotations(cluster)

    unknown = annotate(cluster, alice, f"{ACTION}=rollback", f"{BY}=alice")
    assert unknown.returncode != 0
    assert "must be one of pause, resume, abort, promote, not rollback" in unknown.stderr

    accepted = annotate(cluster, alice, f"{ACTION}=pause", f"{BY}=alice")
    assert accepted.returncode == 0, accepted.stderr
    assert annotations(cluster)[BY] == "alice"

    # bob may not take alice's action over by changing only the verb, nor only the name
    assert annotate(cluster, bob, f"{ACTION}=promote").returncode != 0
    assert annotate(cluster, bob, f"{BY}=bob").returncode == 0  # his own name, with alice's pause: his now
    assert annotate(cluster, alice, f"{BY}=carol").returncode != 0

    # removing both is allowed to anyone who may update the object (the operator, after acting)
    removed = annotate(cluster, alice, f"{ACTION}-", f"{BY}-")
    assert removed.returncode == 0, removed.stderr
    assert ACTION not in annotations(cluster)
    assert BY not in annotations(cluster)
