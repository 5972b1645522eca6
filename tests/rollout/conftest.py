"""Fixtures for the rollout tests: a real control plane, Envoy Gateway with one shared Gateway, a kubelet per
test namespace that runs Deployments as host processes, and Prometheus on demand.

These tests need pod addresses that the API server accepts in EndpointSlices: they run in a network
namespace of their own (`bash tests/gateway/netns.sh .venv/bin/python -m pytest tests/rollout`, which
`make test` does). Elsewhere they are collected, and fail at setup saying so.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers.gateway import EnvoyGateway
from helpers.kube import Cluster, running_cluster
from helpers.kubelet import Kubelet, netns_addresses
from helpers.prometheus import Prometheus, prometheus

GATEWAY_NAMESPACE = "gateway"
GATEWAY_NAME = "rollout-gw"
GATEWAY_PORT = 18888


@pytest.fixture(scope="session")
def pod_addresses() -> list[str]:
    addresses = netns_addresses()
    if not addresses:
        pytest.fail(
            "FINETUNE_NETNS_ADDRESSES is not set: the rollout tests need pod addresses that the API server"
            " accepts; run through tests/gateway/netns.sh / make test",
            pytrace=False,
        )
    return addresses


@pytest.fixture(scope="session")
def cluster(pod_addresses: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """kube-apiserver + etcd with the project's CRDs (no controller manager: the kubelet fixture plays the
    controllers the data plane needs)."""
    with running_cluster(tmp_path_factory.mktemp("kube")) as started:
        yield started


@pytest.fixture(scope="session")
def envoy_gateway(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvoyGateway]:
    with EnvoyGateway(cluster, tmp_path_factory.mktemp("envoy-gateway")) as server:
        print(f"Envoy Gateway ready in {server.started_in:.1f}s, {server.crds_in:.1f}s of it applying CRDs")
        yield server


@pytest.fixture(scope="session")
def gateway(envoy_gateway: EnvoyGateway) -> dict[str, str]:
    """One Gateway for the session, accepting routes from every namespace: its parentRef and listener URL.
    Each test's routes carry the hostname `<namespace>.test` so that they never overlap."""
    envoy_gateway.cluster.kubectl("create", "namespace", GATEWAY_NAMESPACE)
    url = envoy_gateway.gateway(GATEWAY_NAMESPACE, GATEWAY_NAME, GATEWAY_PORT)
    return {"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE, "url": url}


@pytest.fixture
def namespace(cluster: Cluster) -> str:
    """A fresh namespace for one test (never deleted: there is no namespace controller)."""
    name = f"r-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    return name


@pytest.fixture
def kubelet(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[Kubelet]:
    """Runs the Deployments of the test's namespace; every pod stopped when the test ends."""
    with Kubelet(cluster.plane.kubeconfig, namespace, tmp_path / "pods") as running:
        yield running


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    """`prometheus_factory({"job": ["192.0.2.10:8000"]}, labels=None)`: a started Prometheus scraping those
    targets every second, stopped when the test ends."""
    with contextlib.ExitStack() as stack:

        def start(
            targets: dict[str, list[str]], labels: dict[str, dict[str, str]] | None = None
        ) -> Prometheus:
            folder = tmp_path / f"prometheus-{uuid.uuid4().hex[:6]}"
            return stack.enter_context(prometheus(folder, targets, labels))

        yield start
