"""The tests' kubelet behaves as the controllers it stands in for: a new template replaces the pods (old
processes gone, EndpointSlice replaced), scaling adds pods, status follows, a deleted Deployment takes its
pods and endpoints with it, what it cannot run is reported, and nothing outlives it. Prometheus scrapes
its pods at their addresses."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers.echoserver import PORT, deployment, service
from helpers.kube import Cluster
from helpers.kubelet import Kubelet, KubeletError
from helpers.prometheus import Prometheus
from helpers.support import eventually


def status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    out = cluster.kubectl("get", "deployment", name, "-n", namespace, "-o", "yaml").stdout
    return dict(yaml.safe_load(out)["status"])


def test_template_change_scale_and_delete(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    apply = ("apply", "--server-side", "-n", namespace, "-f", "-")
    cluster.kubectl(*apply, stdin=yaml.safe_dump_all([deployment("echo", 1), service("echo")]))
    with Kubelet(cluster.plane.kubeconfig, namespace, tmp_path) as kubelet:
        (first,) = kubelet.wait_ready("echo", 1)
        kubelet.wait_endpoints("echo", {first.address})

        changed = deployment("echo", 2)
        changed["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "ROUND", "value": "2"})
        cluster.kubectl(*apply, stdin=yaml.safe_dump(changed))
        pods = eventually(
            lambda: (
                all(p.template_hash != first.template_hash for p in kubelet.pods("echo"))
                and len(kubelet.pods("echo")) == 2
                and kubelet.wait_ready("echo", 2)
            ),
            30,
        )
        assert first.process.popen.poll() is not None
        kubelet.wait_endpoints("echo", {p.address for p in pods})
        eventually(lambda: status(cluster, namespace, "echo").get("readyReplicas") == 2, 10)
        assert status(cluster, namespace, "echo")["observedGeneration"] == 2

        cluster.kubectl("delete", "deployment", "echo", "-n", namespace)
        kubelet.wait_endpoints("echo", set())
        eventually(lambda: all(p.process.popen.poll() is not None for p in pods), 10)
        assert kubelet.pods("echo") == []

        broken = deployment("broken", 1)
        env = broken["spec"]["template"]["spec"]["containers"][0]["env"]
        env.append({"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}})
        cluster.kubectl(*apply, stdin=yaml.safe_dump(broken))
        with pytest.raises(KubeletError, match="unsupported source"):
            kubelet.wait_ready("broken", 1, timeout=10)

        cluster.kubectl(*apply, stdin=yaml.safe_dump(deployment("last", 1)))
        (last,) = kubelet.wait_ready("last", 1)
    assert last.process.popen.poll() is not None, "a pod outlived its kubelet"


def test_prometheus_scrapes_the_pods(
    cluster: Cluster, namespace: str, kubelet: Kubelet, prometheus_factory: Callable[..., Prometheus]
) -> None:
    apply = ("apply", "--server-side", "-n", namespace, "-f", "-")
    cluster.kubectl(*apply, stdin=yaml.safe_dump(deployment("echo", 2)))
    pods = kubelet.wait_ready("echo", 2)
    server = prometheus_factory({"echo": [f"{pod.address}:{PORT}" for pod in pods]})
    for pod in pods:
        for _ in range(5):
            urllib.request.urlopen(f"http://{pod.address}:{PORT}/", timeout=5).close()
    result = server.wait_for("sum(echo_requests_total) == 10", timeout=30)
    assert float(result[0]["value"][1]) == 10
    assert {t["health"] for t in server.targets()} == {"up"}
