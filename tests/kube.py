"""How tests talk to the test control plane: kubectl, as users do, and the Python client."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client

from controlplane.cluster import ControlPlane

KUBECTL = str(Path(sys.executable).parent / "kubectl")
EXAMPLES_NAMESPACE = "ml-platform"


@dataclass
class Cluster:
    """A running control plane plus the two ways tests talk to it: kubectl and the Python client."""

    plane: ControlPlane
    api: client.ApiClient

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(self.plane.kubeconfig)}
        result = subprocess.run(
            [KUBECTL, *args], input=stdin, capture_output=True, text=True, env=env, check=False, timeout=60
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
        return result

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)
