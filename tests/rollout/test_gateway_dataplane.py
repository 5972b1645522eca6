"""The Gateway API data plane the rollouts will drive, shown on real parts: Envoy Gateway programs Envoy from
an HTTPRoute, and two Deployments run by the tests' kubelet (tests/helpers/echoserver.py behind two Services
with selectors) answer through it. Weighted split, request mirroring, a route change, and a killed pod
leaving its Service."""

from __future__ import annotations

import collections
import http.client
import time
from collections.abc import Callable
from typing import Any

import yaml

from helpers.echoserver import PORT, deployment, service
from helpers.gateway import EnvoyGateway
from helpers.kube import Cluster
from helpers.kubelet import Kubelet, Pod
from helpers.support import eventually

ROUTE = "echo"


def route(
    namespace: str, gateway: dict[str, str], stable: int, candidate: int, mirror: int = 0
) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "backendRefs": [
            {"name": "stable", "port": PORT, "weight": stable},
            {"name": "candidate", "port": PORT, "weight": candidate},
        ]
    }
    if mirror:
        rule["filters"] = [
            {
                "type": "RequestMirror",
                "requestMirror": {"backendRef": {"name": "candidate", "port": PORT}, "percent": mirror},
            }
        ]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": ROUTE, "namespace": namespace},
        "spec": {
            "parentRefs": [{"name": gateway["name"], "namespace": gateway["namespace"]}],
            "hostnames": [f"{namespace}.test"],
            "rules": [rule],
        },
    }


class Client:
    """Requests through the Gateway's listener on one kept-alive connection; answers as (status, body)."""

    def __init__(self, url: str, host: str) -> None:
        self.address = url.removeprefix("http://")
        self.host = host
        self.connection = http.client.HTTPConnection(self.address, timeout=5)

    def get(self) -> tuple[int, str]:
        for attempt in range(2):
            try:
                self.connection.request("GET", "/", headers={"Host": self.host})
                response = self.connection.getresponse()
                return response.status, response.read().decode()
            except (http.client.HTTPException, OSError):
                self.connection.close()
                self.connection = http.client.HTTPConnection(self.address, timeout=5)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def send(self, count: int) -> list[tuple[int, str]]:
        return [self.get() for _ in range(count)]


def seen(pod: Pod) -> list[str]:
    """The x-request-ids the pod has received so far (from its log)."""
    lines = pod.process.log.read_text().splitlines()
    return [line.split()[1] for line in lines if line.startswith("request ")]


def variant(body: str) -> str:
    return body.split("-", maxsplit=1)[0]  # pod names are <deployment>-<template hash>-<suffix>


def apply(cluster: Cluster, namespace: str, *manifests: dict[str, Any]) -> None:
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", stdin=yaml.safe_dump_all(manifests))


def settle(
    client: Client, done: Callable[[int, str], bool], since: float, timeout: float = 30.0
) -> tuple[float, list[tuple[int, str]]]:
    """Send requests until `done(status, body)` holds for 20 answers in a row: the seconds from `since`
    (a time.monotonic()) to the first of those 20, and the answers before it."""
    answers: list[tuple[int, str]] = []
    streak, first = 0, 0.0
    while streak < 20:
        assert time.monotonic() - since < timeout, f"the data plane did not settle: {answers[-5:]}"
        answer = client.get()
        answers.append(answer)
        if done(*answer):
            first = first or time.monotonic() - since
            streak += 1
        else:
            streak, first = 0, 0.0
    return first, answers[:-20]


def patch_route(cluster: Cluster, namespace: str, manifest: dict[str, Any]) -> None:
    """Replace the route's rules (a merge patch through the client: no kubectl start-up in a timing)."""
    cluster.custom.patch_namespaced_custom_object(
        "gateway.networking.k8s.io", "v1", namespace, "httproutes", ROUTE, {"spec": manifest["spec"]}
    )


def ready_replicas(cluster: Cluster, namespace: str, name: str) -> int:
    status = cluster.kubectl("get", "deployment", name, "-n", namespace, "-o", "yaml").stdout
    return int(yaml.safe_load(status)["status"].get("readyReplicas", 0))


def split(client: Client) -> None:
    """80/20: once both Services' endpoints reached Envoy, 400 requests split by weight."""
    eventually(lambda: {variant(b) for _, b in client.send(20)} == {"stable", "candidate"}, 30)
    start = time.monotonic()
    answers = client.send(400)
    took = time.monotonic() - start
    assert {s for s, _ in answers} == {200}
    counts = collections.Counter(variant(body) for _, body in answers)
    print(f"80/20 of 400 requests (sent in {took:.2f}s): {dict(counts)}")
    # binomial(400, 0.8): standard deviation 8, so +-40 is five of them
    assert abs(counts["stable"] - 320) <= 40, counts
    assert len({body for _, body in answers if variant(body) == "candidate"}) == 2  # both candidate pods


def mirror(client: Client, stable: Pod, candidates: list[Pod]) -> None:
    """Shadow: every live request answered by stable and mirrored to the candidate, same x-request-id."""

    def shadowed() -> set[str]:
        return {i for p in candidates for i in seen(p)}

    start = time.monotonic()
    settle(client, lambda s, b: s == 200 and variant(b) == "stable", start)
    eventually(lambda: client.get() and shadowed(), 30, "nothing mirrored")
    time.sleep(0.5)  # mirrored requests of the switch-over still in flight
    live_before, shadow_before = set(seen(stable)), shadowed()
    answers = client.send(100)
    assert {variant(b) for _, b in answers} == {"stable"}
    live = set(seen(stable)) - live_before
    shadow = eventually(lambda: len(new := shadowed() - shadow_before) >= 100 and new, 10)
    assert len(live) == 100
    assert shadow == live
    print(
        f"mirrored 100 of 100 requests with their x-request-id, {time.monotonic() - start:.2f}s for the phase"
    )


def test_split_mirror_route_change_and_a_killed_pod(
    cluster: Cluster,
    envoy_gateway: EnvoyGateway,
    gateway: dict[str, str],
    kubelet: Kubelet,
    namespace: str,
) -> None:
    start = time.monotonic()
    apply(cluster, namespace, deployment("stable", 1), deployment("candidate", 2))
    apply(cluster, namespace, service("stable"), service("candidate"))
    (stable,) = kubelet.wait_ready("stable", 1)
    candidates = kubelet.wait_ready("candidate", 2)
    kubelet.wait_endpoints("stable", {stable.address})
    kubelet.wait_endpoints("candidate", {pod.address for pod in candidates})
    assert ready_replicas(cluster, namespace, "candidate") == 2
    print(f"3 pods ready and in their EndpointSlices in {time.monotonic() - start:.2f}s")

    client = Client(gateway["url"], f"{namespace}.test")
    apply(cluster, namespace, route(namespace, gateway, 80, 20))
    accepted = envoy_gateway.wait_route(namespace, ROUTE, gateway["url"], f"{namespace}.test")
    print(f"HTTPRoute accepted and answering in {accepted:.2f}s")
    split(client)

    patch_route(cluster, namespace, route(namespace, gateway, 100, 0, mirror=100))
    mirror(client, stable, candidates)

    # a route change: everything to the candidate, timed from the write to the first of 20 answers in a row
    start = time.monotonic()
    patch_route(cluster, namespace, route(namespace, gateway, 0, 100))
    took, old = settle(client, lambda s, b: s == 200 and variant(b) == "candidate", start)
    print(f"route change 100/0 -> 0/100 took effect in {took:.2f}s ({len(old)} answers by the old route)")
    assert took < 10

    # a killed candidate pod leaves the Service's EndpointSlice, and then gets no requests; requests are
    # sent all along, from the kill until the slice has changed and 20 in a row succeed
    start = time.monotonic()
    dead, survivor = kubelet.kill("candidate", 0), candidates[1]
    answers = []
    while kubelet.endpoints("candidate") != {survivor.address}:
        assert time.monotonic() - start < 30, "the kubelet did not update the EndpointSlice"
        answers.append(client.get())
    updated = time.monotonic() - start
    healed, before = settle(client, lambda s, b: s == 200, start)
    failed = sum(s != 200 for s, _ in answers + before)
    print(
        f"killed {dead.name}: EndpointSlice updated after {updated:.2f}s, served again after {healed:.2f}s;"
        f" {failed} of {len(answers) + len(before)} requests meanwhile failed"
    )
    counted = len(seen(survivor))
    assert client.send(100) == [(200, survivor.name)] * 100
    assert len(seen(survivor)) - counted == 100
    assert ready_replicas(cluster, namespace, "candidate") == 1
