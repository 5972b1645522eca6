"""A real Argo CD syncing examples/ from a git repository into a real API server, and reporting the health
that the chart's Lua scripts compute.

Argo CD is built from its Go module (tests/argocd/build.sh: one `argocd` binary that runs as the
application controller or the repo server, after the name it is started by) and Redis comes from
Debian's package (tests/argocd/fetch-redis.sh); both are cached outside the repository. The controller
runs outside any cluster, so the control plane is registered as a cluster Secret (admin client
certificate) and is the Application's destination; the Application points at a file:// git repository
holding the examples; argocd-cm carries the health scripts exactly as docs/argocd.md has users merge them
in. No operator runs, so the jobs have no status (Progressing); statuses the operator would write are
then set through the status subresource, and Argo CD must report what the scripts make of them.

Building Argo CD on a cold machine takes about ten minutes (`make argocd`, before the suite); a warm cache
only checks it is there.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.cluster import ControlPlane, running
from helpers.argocd import SCRIPTS
from helpers.processes import Process, free_port, spawn, wait_http
from helpers.support import CRDS, EXAMPLES, ROOT, eventually

BUILD_SCRIPT = ROOT / "tests" / "argocd" / "build.sh"
REDIS_SCRIPT = ROOT / "tests" / "argocd" / "fetch-redis.sh"
NAMESPACE = "ml-platform"  # the examples' namespace; the Application's destination for those naming none
APP = "finetune-examples"


def _cached(script: Path, what: str) -> Path:
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{what} failed:\n{result.stderr[-4000:]}"
    return Path(result.stdout.strip().splitlines()[-1])


def argocd_cm() -> dict[str, Any]:
    """argocd-cm with the health scripts as docs/argocd.md has users merge them in; no in-cluster
    destination (the controller runs outside any cluster, without a ServiceAccount)."""
    data = {
        f"resource.customizations.health.finetune.dev_{kind}": s.read_text() for kind, s in SCRIPTS.items()
    }
    data["cluster.inClusterEnabled"] = "false"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "argocd-cm",
            "namespace": "argocd",
            "labels": {"app.kubernetes.io/part-of": "argocd"},
        },
        "data": data,
    }


def cluster_secret(plane: ControlPlane) -> dict[str, Any]:
    """The control plane as an Argo CD cluster, reached with the admin client certificate."""

    def data(name: str) -> str:
        return base64.b64encode(plane.pki[name].read_bytes()).decode()

    tls = {"caData": data("ca.crt"), "certData": data("admin.crt"), "keyData": data("admin.key")}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "cluster-finetune-test",
            "namespace": "argocd",
            "labels": {"argocd.argoproj.io/secret-type": "cluster"},
        },
        "stringData": {
            "name": "finetune-test",
            "server": plane.server,
            "config": json.dumps({"tlsClientConfig": tls}),
        },
    }


def setup_objects(plane: ControlPlane, repo_url: str) -> list[dict[str, Any]]:
    return [
        argocd_cm(),
        cluster_secret(plane),
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": "argocd-secret",
                "namespace": "argocd",
                "labels": {"app.kubernetes.io/part-of": "argocd"},
            },
            "stringData": {"server.secretkey": "test-only-not-a-secret"},
        },
        {  # argocd-server creates the default project when it starts; no argocd-server runs here
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "AppProject",
            "metadata": {"name": "default", "namespace": "argocd"},
            "spec": {
                "sourceRepos": ["*"],
                "destinations": [{"server": "*", "namespace": "*"}],
                "clusterResourceWhitelist": [{"group": "*", "kind": "*"}],
            },
        },
        {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Application",
            "metadata": {"name": APP, "namespace": "argocd"},
            "spec": {
                "project": "default",
                "source": {"repoURL": repo_url, "targetRevision": "main", "path": "."},
                "destination": {"server": plane.server, "namespace": NAMESPACE},
                "syncPolicy": {
                    "automated": {"prune": True},
                    "syncOptions": ["CreateNamespace=true", "ServerSideApply=true"],
                },
            },
        },
    ]


def git_repository(directory: Path) -> str:
    """A git repository holding examples/ at its root, on branch main; its file:// URL."""
    directory.mkdir()
    for manifest in EXAMPLES.glob("*.yaml"):
        shutil.copy(manifest, directory / manifest.name)
    env = ["-c", "user.name=finetune-tests", "-c", "user.email=tests@finetune.invalid"]
    for args in (["init", "-q", "-b", "main"], ["add", "."], [*env, "commit", "-q", "-m", "examples"]):
        subprocess.run(["git", "-C", str(directory), *args], check=True, capture_output=True)
    return f"file://{directory}"


@dataclass
class ArgoCD:
    plane: ControlPlane
    processes: list[Process]

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        result = self.plane.kubectl(*args, stdin=stdin)
        assert result.returncode == 0, f"kubectl {' '.join(args)} failed:\n{result.stderr}"
        return result.stdout

    def application(self) -> dict[str, Any]:
        for process in self.processes:
            process.check_alive()
        app: dict[str, Any] = json.loads(
            self.kubectl("-n", "argocd", "get", "application", APP, "-o", "json")
        )
        return app

    def resource_health(self, kind: str, name: str) -> tuple[str, str] | None:
        """(status, message) Argo CD reports for one resource of the application, once it has one."""
        for resource in self.application().get("status", {}).get("resources", []):
            if resource["kind"] == kind and resource["name"] == name and resource.get("health"):
                return resource["health"].get("status", ""), resource["health"].get("message", "")
        return None


@pytest.fixture(scope="module")
def argocd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArgoCD]:
    binaries = _cached(BUILD_SCRIPT, "building Argo CD")
    redis = _cached(REDIS_SCRIPT, "fetching Redis")
    work = tmp_path_factory.mktemp("argocd")
    with running(workdir=work / "kube", crds=CRDS) as plane:
        argo = ArgoCD(plane, [])
        argo.kubectl("apply", "--server-side", "-f", str(binaries / "crds"))
        # `kubectl wait` fails, not waits, while a new CRD has no conditions yet
        eventually(
            lambda: (
                plane.kubectl(
                    "wait", "--for=condition=Established", "--timeout=5s", "-f", str(binaries / "crds")
                ).returncode
                == 0
            ),
            timeout=60,
            message="Argo CD's CRDs never became established",
        )
        argo.kubectl("create", "namespace", "argocd")
        # settings first: the controller exits when it starts without argocd-cm
        argo.kubectl(
            "apply", "-f", "-", stdin=yaml.safe_dump_all(setup_objects(plane, git_repository(work / "repo")))
        )
        redis_port, repo_port = free_port(), free_port()
        try:
            argo.processes.append(
                spawn(
                    "redis",
                    [
                        str(redis / "redis-server"),
                        "--bind",
                        "127.0.0.1",
                        "--port",
                        str(redis_port),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ],
                    work,
                )
            )
            redis_address = f"127.0.0.1:{redis_port}"
            repo_metrics = free_port()
            # git-verify-wrapper.sh from PATH, as in Argo CD's image; no GnuPG keyring (/app/config/gpg);
            # --client-ca-path defaults to the image's mTLS path, which --disable-tls refuses
            repo_env = {
                **os.environ,
                "PATH": f"{binaries}:{os.environ['PATH']}",
                "ARGOCD_GPG_ENABLED": "false",
            }
            repo_server = spawn(
                "repo-server",
                [
                    str(binaries / "argocd-repo-server"),
                    "--address",
                    "127.0.0.1",
                    "--port",
                    str(repo_port),
                    "--metrics-port",
                    str(repo_metrics),
                    "--disable-tls",
                    "--client-ca-path",
                    "",
                    "--redis",
                    redis_address,
                    "--logformat",
                    "text",
                ],
                work,
                env=repo_env,
            )
            argo.processes.append(repo_server)
            wait_http(f"http://127.0.0.1:{repo_metrics}/metrics", repo_server)
            controller_metrics = free_port()
            # Argo CD 3 keeps each resource's health in Redis only; --persist-resource-health writes it to
            # the Application's status.resources too, where these tests (and kubectl users) read it
            controller = spawn(
                "application-controller",
                [
                    str(binaries / "argocd-application-controller"),
                    "--kubeconfig",
                    str(plane.kubeconfig),
                    "--namespace",
                    "argocd",
                    "--repo-server",
                    f"127.0.0.1:{repo_port}",
                    "--repo-server-plaintext",
                    "--redis",
                    redis_address,
                    "--metrics-port",
                    str(controller_metrics),
                    "--persist-resource-health",
                    "--status-processors",
                    "2",
                    "--operation-processors",
                    "2",
                    "--logformat",
                    "text",
                ],
                work,
            )
            argo.processes.append(controller)
            wait_http(f"http://127.0.0.1:{controller_metrics}/metrics", controller)
            yield argo
        finally:
            for process in reversed(argo.processes):
                process.stop()


def _examples() -> list[tuple[str, str]]:
    return [
        (doc["kind"], doc["metadata"]["name"])
        for manifest in sorted(EXAMPLES.glob("*.yaml"))
        for doc in yaml.safe_load_all(manifest.read_text())
        if doc
    ]


def test_syncs_the_examples_and_reports_the_scripts_health(argocd: ArgoCD) -> None:
    def synced() -> dict[str, Any] | None:
        app = argocd.application()
        status = app.get("status", {})
        done = status.get("sync", {}).get("status") == "Synced" and status.get("health", {}).get("status")
        return app if done else None

    app = eventually(synced, timeout=180, message="the Application never synced")
    # every example is in the cluster, applied by Argo CD
    for kind, name in _examples():
        got = argocd.kubectl("-n", NAMESPACE, "get", kind.lower(), name, "-o", "name")
        assert got.strip(), (kind, name)
    # no operator runs: jobs and deployments have no status yet, which the scripts call Progressing; gates
    # are Healthy
    for kind, name in _examples():
        health = eventually(lambda k=kind, n=name: argocd.resource_health(k, n), timeout=60)
        if kind == "FineTuneJob":
            assert health == ("Progressing", "waiting for the operator to pick the job up"), (name, health)
        elif kind == "ModelDeployment":
            wanted = ("Progressing", "waiting for the operator to pick the deployment up")
            assert health == wanted, (name, health)
        else:
            assert health == ("Healthy", "no evaluation yet"), (name, health)
    assert app["status"]["health"]["status"] == "Progressing"


def test_reports_the_status_the_operator_writes(argocd: ArgoCD) -> None:
    eventually(lambda: argocd.resource_health("FineTuneJob", "assistant-dpo"), timeout=180)
    now = "2026-01-01T00:00:00Z"
    statuses = {
        "assistant-dpo": (
            {
                "phase": "Failed",
                "conditions": [
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "TrainingFailed",
                        "message": "trainer exited with 137",
                        "lastTransitionTime": now,
                    }
                ],
            },
            ("Degraded", "Failed (TrainingFailed): trainer exited with 137"),
        ),
        "support-assistant-sft": (
            {
                "phase": "AwaitingApproval",
                "gate": {"verdict": "Passed", "verdictId": "v-123"},
                "conditions": [
                    {
                        "type": "Approved",
                        "status": "False",
                        "reason": "AwaitingApproval",
                        "message": "annotate with finetune.dev/approve=v-123",
                        "lastTransitionTime": now,
                    }
                ],
            },
            ("Suspended", "awaiting approval of verdict v-123: annotate with finetune.dev/approve=v-123"),
        ),
    }
    for name, (status, _) in statuses.items():
        argocd.kubectl(
            "-n",
            NAMESPACE,
            "patch",
            "finetunejob",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": status}),
        )
    for name, (_, wanted) in statuses.items():
        eventually(
            lambda n=name, w=wanted: argocd.resource_health("FineTuneJob", n) == w,
            timeout=120,
            message=f"Argo CD never reported {wanted} for {name}",
        )
    # a Degraded job makes the application Degraded; the sync is untouched by status
    app = eventually(
        lambda: (a := argocd.application())["status"]["health"]["status"] == "Degraded" and a, timeout=120
    )
    assert app["status"]["sync"]["status"] == "Synced"
