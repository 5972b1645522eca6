"""How tests talk to the test control plane: kubectl, as users do, and the Python client."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config

from controlplane.cluster import ControlPlane, running
from helpers.support import CRDS

EXAMPLES_NAMESPACE = "ml-platform"


def finished_job_status(*, failed: bool = False, reason: str = "", message: str = "") -> dict[str, Any]:
    """A batch/v1 Job status as the Job controller writes it when a Job ends (accepted by the API server's
    status validation: the terminal condition follows SuccessCriteriaMet or FailureTarget)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    stamp = {"lastProbeTime": now, "lastTransitionTime": now}
    if failed:
        why = {
            "reason": reason or "BackoffLimitExceeded",
            "message": message or "Job has reached the specified backoff limit",
        }
        return {
            "startTime": now,
            "failed": 1,
            "conditions": [
                {"type": "FailureTarget", "status": "True", **why, **stamp},
                {"type": "Failed", "status": "True", **why, **stamp},
            ],
        }
    return {
        "startTime": now,
        "completionTime": now,
        "succeeded": 1,
        "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", **stamp},
            {"type": "Complete", "status": "True", **stamp},
        ],
    }


@dataclass
class Cluster:
    """A running control plane plus the two ways tests talk to it: kubectl and the Python client."""

    plane: ControlPlane
    api: client.ApiClient

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = self.plane.kubectl(*args, stdin=stdin)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
        return result

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def finish_job(
        self, namespace: str, name: str, *, failed: bool = False, reason: str = "", message: str = ""
    ) -> None:
        """Play the Job controller: mark a Job Complete or Failed through its status subresource."""
        status = finished_job_status(failed=failed, reason=reason, message=message)
        client.BatchV1Api(self.api).patch_namespaced_job_status(name, namespace, {"status": status})

    def ftj(self, namespace: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            "finetune.dev", "v1alpha1", namespace, "finetunejobs", name
        )
        return obj

    def job_names(self, namespace: str) -> list[str]:
        return sorted(
            j.metadata.name for j in client.BatchV1Api(self.api).list_namespaced_job(namespace).items
        )


@contextlib.contextmanager
def running_cluster(workdir: Path, *, with_controllers: bool = False) -> Iterator[Cluster]:
    """A control plane with the project's CRDs applied and the examples' namespace created, for the block."""
    with running(with_controllers=with_controllers, workdir=workdir, crds=CRDS) as plane:
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        cluster = Cluster(plane, api)
        cluster.kubectl("create", "namespace", EXAMPLES_NAMESPACE)
        try:
            yield cluster
        finally:
            api.close()
