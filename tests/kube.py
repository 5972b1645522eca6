"""How tests talk to the test control plane: kubectl, as users do, and the Python client."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from kubernetes import client

from controlplane.cluster import ControlPlane

EXAMPLES_NAMESPACE = "ml-platform"


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
