"""ModelDeployment rollouts end to end, through real parts: the operator (`python -m finetune_operator`)
drives Deployments, Services and an HTTPRoute on a real API server; Envoy Gateway programs Envoy from the
route; the tests' kubelet runs the model servers (`python -m finetune_trainer serve`) as processes on pod
addresses; a real Prometheus scrapes them; versions are tiny models promoted into a real S3 (SeaweedFS).

The stable version answers "yes, certainly."; a good candidate says the same (another training run, another
digest); a worse one answers "no."; a slow one is a much larger model. The shadow judge prefers replies that
say yes. Traffic is real requests through the Gateway's listener; which variant answered each is read from
the server's `x-finetune-variant` header.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.kube import Cluster
from helpers.kubelet import Kubelet
from helpers.operator_process import OperatorProcess
from helpers.prometheus import Prometheus, prometheus
from helpers.rollouts import (
    ROOT,
    SERVER_PORT,
    Version,
    apply,
    manifest,
    mdep,
    promoted_by_a_job,
    publish_versions,
    route,
    secret,
    serving_ready,
    set_model,
    stage,
    traffic,
    wait_stage,
    within_tolerance,
)
from helpers.s3server import S3Server, running
from helpers.support import eventually


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with running(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(scope="module")
def versions(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Version]:
    """The model line's versions, trained and promoted once for the module."""
    return publish_versions(s3, tmp_path_factory.mktemp("versions"))


@pytest.fixture(scope="module")
def scraper(pod_addresses: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Prometheus scraping every pod address the kubelet may hand out (an empty one is just down)."""
    targets = {"model-servers": [f"{address}:{SERVER_PORT}" for address in pod_addresses]}
    with prometheus(tmp_path_factory.mktemp("prometheus"), targets) as server:
        yield server


@pytest.fixture(scope="module")
def policies(cluster: Cluster) -> None:
    """The admission policies that authenticate who sets a rollout action (and approvals)."""
    for path in sorted((ROOT / "crds" / "admission").glob("*.yaml")):
        eventually(
            lambda p=path: (
                cluster.kubectl("apply", "--server-side", "-f", str(p), check=False).returncode == 0
            ),
            timeout=30,
            message=f"apply {path.name}",
        )


@pytest.fixture
def operator(
    cluster: Cluster, namespace: str, policies: None, tmp_path: Path, s3: S3Server
) -> Iterator[OperatorProcess]:
    running_operator = OperatorProcess(
        cluster.plane.kubeconfig, tmp_path / "operator", (namespace,), env={"FINETUNE_RESYNC_SECONDS": "5"}
    )
    (tmp_path / "operator").mkdir()
    running_operator.start()
    try:
        yield running_operator
    finally:
        running_operator.stop()
        print(running_operator.log()[-6000:])


def test_a_good_candidate_shadows_then_steps_up_and_serves_everything(
    cluster: Cluster,
    namespace: str,
    gateway: dict[str, str],
    kubelet: Kubelet,
    operator: OperatorProcess,
    versions: dict[str, Version],
    scraper: Prometheus,
    s3: S3Server,
) -> None:
    secret(cluster, namespace)
    obj = manifest(
        namespace,
        gateway,
        versions["stable"],
        scraper.url,
        s3,
        steps=[{"weight": 20, "duration": "10s"}, {"weight": 50, "duration": "20s"}],
    )
    apply(cluster, obj)
    serving_ready(cluster, namespace, gateway)
    with traffic(gateway["url"], f"{namespace}.test") as sent:
        promoted_by_a_job(cluster, namespace, s3, versions["good"])
        wait_stage(cluster, namespace, "Shadow")
        shadow_started = time.monotonic()
        wait_stage(cluster, namespace, "Canary", 1, timeout=150)
        shadow = mdep(cluster, namespace)["status"]["history"]
        assert any(h["reason"] == "ShadowPassed" for h in shadow), shadow
        assert not any(a[2] == "candidate" for a in sent.since(0, shadow_started))  # weight 0 while shadowing

        step1 = time.monotonic()
        time.sleep(6)
        share, count = sent.share(step1 + 1, time.monotonic())
        assert within_tolerance(share, count, 0.2), (share, count)

        # mid-rollout: the unchanged manifest from git changes nothing
        before = mdep(cluster, namespace)
        apply(cluster, obj)
        after = mdep(cluster, namespace)
        assert after["metadata"]["generation"] == before["metadata"]["generation"]
        assert after["spec"] == before["spec"]
        assert after["status"]["weights"] == before["status"]["weights"]

        # an operator restart mid-canary resumes at the same step and leaves the weights alone
        wait_stage(cluster, namespace, "Canary", 2, timeout=60)
        operator.stop()
        weights = route(cluster, namespace)
        operator.start()
        time.sleep(6)
        again = route(cluster, namespace)
        assert again["metadata"]["generation"] == weights["metadata"]["generation"]
        assert again["spec"] == weights["spec"]
        assert stage(cluster, namespace) == ("Canary", 2)
        step2 = time.monotonic()
        time.sleep(6)
        share, count = sent.share(step2, time.monotonic())
        assert within_tolerance(share, count, 0.5), (share, count)

        wait_stage(cluster, namespace, "Succeeded", timeout=150)
        done = time.monotonic()
        time.sleep(4)
        final = sent.since(done + 1)
        assert final
        assert all(a[1] == 200 for a in final), final[-5:]
        assert all(a[2] == "stable" for a in final), final[-5:]
    status = mdep(cluster, namespace)["status"]
    assert status["stable"]["digest"] == versions["good"].digest
    assert status["weights"] == {"stable": 100, "candidate": 0}
    assert cluster.ftj(namespace, "tune-good")["status"]["rollout"]["stage"] == "Succeeded"
    assert not kubelet.pods("chat-candidate")
    pods = kubelet.pods("chat-stable")
    assert pods
    assert all(p.alive for p in pods)


def test_a_worse_candidate_is_stopped_in_shadow_and_never_serves_a_user(
    cluster: Cluster,
    namespace: str,
    gateway: dict[str, str],
    kubelet: Kubelet,
    operator: OperatorProcess,
    versions: dict[str, Version],
    scraper: Prometheus,
    s3: S3Server,
) -> None:
    secret(cluster, namespace)
    obj = manifest(namespace, gateway, versions["stable"], scraper.url, s3)
    apply(cluster, obj)
    serving_ready(cluster, namespace, gateway)
    with traffic(gateway["url"], f"{namespace}.test") as sent:
        set_model(cluster, obj, versions["worse"])
        wait_stage(cluster, namespace, "RolledBack", timeout=150)
        time.sleep(2)
    status = mdep(cluster, namespace)["status"]
    assert status["history"][-1]["reason"] == "ShadowFailed", status["history"][-2:]
    win = next(c for c in status["shadow"] if c["metric"] == "win_rate")
    assert win["samples"] >= 1
    assert win["value"] < 0.45
    assert sent.answers
    assert all(a[2] == "stable" for a in sent.answers if a[1] == 200)
    assert all(a[1] == 200 for a in sent.answers), [a for a in sent.answers if a[1] != 200][:5]


def test_a_slow_candidate_rolls_back_within_an_interval_and_then_gets_no_requests(
    cluster: Cluster,
    namespace: str,
    gateway: dict[str, str],
    kubelet: Kubelet,
    operator: OperatorProcess,
    versions: dict[str, Version],
    scraper: Prometheus,
    s3: S3Server,
) -> None:
    secret(cluster, namespace)
    obj = manifest(
        namespace,
        gateway,
        versions["stable"],
        scraper.url,
        s3,
        shadow=False,
        steps=[{"weight": 30, "duration": "1m"}],
    )
    apply(cluster, obj)
    serving_ready(cluster, namespace, gateway)
    with traffic(gateway["url"], f"{namespace}.test") as sent:
        set_model(cluster, obj, versions["slow"])
        wait_stage(cluster, namespace, "Canary", 1, timeout=120)
        canary = time.monotonic()
        took = wait_stage(cluster, namespace, "RolledBack", timeout=60)
        rolled = time.monotonic()
        time.sleep(3)
    status = mdep(cluster, namespace)["status"]
    assert status["history"][-1]["reason"] == "AnalysisFailed", status["history"][-2:]
    assert "latency-vs-stable" in status["history"][-1]["message"]
    # one interval (4 s) after the step started, plus a scrape and a reconcile's slack
    assert took < 4 * 2.5, took
    served_candidate = [a for a in sent.since(canary, rolled) if a[2] == "candidate"]
    assert served_candidate  # it did get its share before the breach was seen
    after = sent.since(rolled + 1)
    assert after
    assert all(a[2] == "stable" for a in after)
    assert not kubelet.pods("chat-candidate")
