"""kube-controller-manager behaviour the operator relies on: Jobs make Pods, owner references clean up."""

from __future__ import annotations

from kubernetes import client

from helpers.kube import Cluster
from helpers.support import eventually, example


def test_job_controller_creates_a_pod(cluster_with_controllers: Cluster) -> None:
    cluster = cluster_with_controllers
    # the service-account controller must create "default" before pods may be admitted
    eventually(lambda: cluster.core.list_namespaced_service_account("default").items)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "probe"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "busybox:1.36", "command": ["true"]}],
                }
            },
        },
    }
    client.BatchV1Api(cluster.api).create_namespaced_job("default", job)
    pods = eventually(
        lambda: cluster.core.list_namespaced_pod("default", label_selector="job-name=probe").items
    )
    assert pods[0].metadata.owner_references[0].kind == "Job"
    assert pods[0].status.phase == "Pending"  # no nodes: nothing schedules it, as in a cluster without GPUs


def test_children_owned_by_a_finetunejob_are_garbage_collected(cluster_with_controllers: Cluster) -> None:
    cluster = cluster_with_controllers
    body = example("vision-product-classifier.yaml")
    body["metadata"] = {"name": "owner", "namespace": "default"}
    owner = cluster.custom.create_namespaced_custom_object(
        "finetune.dev", "v1alpha1", "default", "finetunejobs", body
    )
    cluster.core.create_namespaced_config_map(
        "default",
        {
            "metadata": {
                "name": "owner-trainer-config",
                "ownerReferences": [
                    {
                        "apiVersion": "finetune.dev/v1alpha1",
                        "kind": "FineTuneJob",
                        "name": "owner",
                        "uid": owner["metadata"]["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "data": {"trainer.json": "{}"},
        },
    )
    cluster.custom.delete_namespaced_custom_object(
        "finetune.dev", "v1alpha1", "default", "finetunejobs", "owner"
    )
    names = lambda: [c.metadata.name for c in cluster.core.list_namespaced_config_map("default").items]  # noqa: E731
    eventually(lambda: "owner-trainer-config" not in names())
