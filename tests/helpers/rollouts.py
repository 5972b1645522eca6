"""What the rollout tests, `bench/rollout_latency.py` and `make demo-rollout` share: the model line's versions
(tiny models promoted into S3), a ModelDeployment manifest with a user's analysis queries, traffic through the
Gateway with the variant that answered each request, and reading where a rollout stands.

The stable version answers "yes, certainly."; "good" says the same (another training run, another digest);
"worse" answers "no."; "slow" is a much larger model. The shadow judge prefers replies that say yes. Which
variant answered a request is the server's `x-finetune-variant` header.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import yaml

from finetune_trainer.storage import Store
from helpers.kube import Cluster
from helpers.s3server import ACCESS_KEY, SECRET_KEY, S3Server
from helpers.s3server import client as s3_client
from helpers.servedmodels import answering_model, publish_version
from helpers.support import eventually

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "models"
SERVER_PORT = 8000
YES, NO = "yes, certainly.", "no."
# A binomial share of n requests at weight w lies within w +- 5 sd: 5 * sqrt(w (1 - w) / n).
SPLIT_SIGMAS = 5


# The canary's analysis, as a user would write it: non-200 answers per request, and the candidate's median
# latency over the stable's.
SELECT = 'namespace="{{ namespace }}",modeldeployment="{{ modeldeployment }}"'
CANDIDATE = "{" + SELECT + ',variant="candidate"}'
ERROR_RATE = (
    "(sum(rate(finetune_serve_requests_total{"
    + SELECT
    + ',variant="candidate",code!="200"}[{{ interval }}]))'
    " or vector(0)) / sum(rate(finetune_serve_requests_total" + CANDIDATE + "[{{ interval }}]))"
)
LATENCY_RATIO = " / ".join(
    "histogram_quantile(0.5, sum by (le) (rate(finetune_serve_request_duration_seconds_bucket{"
    + SELECT
    + f',variant="{variant}"'
    + "}[{{ interval }}])))"
    for variant in ("candidate", "stable")
)


@dataclass(frozen=True)
class Version:
    uri: str
    digest: str


@dataclass
class Traffic:
    """Requests through the Gateway, a few per second from one thread, each answer's variant recorded."""

    url: str
    host: str
    answers: list[tuple[float, int, str]] = field(default_factory=list)  # (time, status, variant)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        counter = 0
        while not self.stop.is_set():
            counter += 1
            body = json.dumps(
                {
                    "messages": [{"role": "user", "content": f"is it going to rain {counter % 90}?"}],
                    "max_tokens": 8,
                }
            ).encode()
            request = urllib.request.Request(
                f"{self.url}/v1/chat/completions",
                data=body,
                headers={"Host": self.host, "Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    self.answers.append(
                        (time.monotonic(), response.status, response.headers.get("x-finetune-variant", ""))
                    )
            except urllib.error.HTTPError as err:
                self.answers.append((time.monotonic(), err.code, err.headers.get("x-finetune-variant", "")))
            except OSError:
                self.answers.append((time.monotonic(), 0, ""))
            time.sleep(0.05)

    def since(self, start: float, end: float | None = None) -> list[tuple[float, int, str]]:
        return [a for a in list(self.answers) if a[0] >= start and (end is None or a[0] < end)]

    def share(self, start: float, end: float) -> tuple[float, int]:
        window = [a for a in self.since(start, end) if a[1] == 200]
        return sum(1 for a in window if a[2] == "candidate") / max(1, len(window)), len(window)


@contextlib.contextmanager
def traffic(url: str, host: str) -> Iterator[Traffic]:
    sender = Traffic(url, host)
    thread = threading.Thread(target=sender.run, daemon=True)
    thread.start()
    try:
        yield sender
    finally:
        sender.stop.set()
        thread.join(timeout=15)


def manifest(
    namespace: str,
    gateway: dict[str, str],
    stable: Version,
    prometheus_url: str,
    s3: S3Server,
    *,
    shadow: bool = True,
    steps: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    rollout: dict[str, Any] = {
        "candidateReadyTimeout": "2m",
        "canary": {
            "steps": steps or [{"weight": 20, "duration": "8s"}, {"weight": 50, "duration": "8s"}],
            "analysis": {
                "interval": "4s",
                "metrics": [
                    {"name": "error-rate", "query": ERROR_RATE, "thresholdRange": {"max": 0.05}},
                    {"name": "latency-vs-stable", "query": LATENCY_RATIO, "thresholdRange": {"max": 5.0}},
                ],
            },
        },
    }
    if shadow:
        rollout["shadow"] = {
            "mirrorPercent": 100,
            "minSamples": 15,
            "maxDuration": "2m",
            "checks": [
                {
                    "metric": "win_rate",
                    "threshold": {"min": 0.45},
                    "judge": {
                        "type": "string_check",
                        "name": "says-yes",
                        "input": "{{sample.output_text}}",
                        "reference": "yes",
                        "operation": "ilike",
                    },
                }
            ],
        }
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "chat", "namespace": namespace},
        "spec": {
            "model": {"uri": stable.uri, "digest": stable.digest},
            "serving": {"port": SERVER_PORT, "maxNewTokens": 16},
            "gateway": {
                "parentRefs": [{"name": gateway["name"], "namespace": gateway["namespace"]}],
                "hostnames": [f"{namespace}.test"],
            },
            "storage": {
                "bucket": BUCKET,
                "prefix": "deployments/",
                "endpoint": s3.endpoint,
                "credentialsSecretRef": {"name": "s3"},
            },
            "prometheus": {"address": prometheus_url},
            "rollout": rollout,
        },
    }


def apply(cluster: Cluster, obj: dict[str, Any]) -> None:
    cluster.kubectl(
        "apply", "--server-side", "--field-manager=argocd-controller", "-f", "-", stdin=yaml.safe_dump(obj)
    )


def mdep(cluster: Cluster, namespace: str) -> dict[str, Any]:
    found: dict[str, Any] = cluster.custom.get_namespaced_custom_object(
        "finetune.dev", "v1alpha1", namespace, "modeldeployments", "chat"
    )
    return found


def route(cluster: Cluster, namespace: str) -> dict[str, Any]:
    found: dict[str, Any] = cluster.custom.get_namespaced_custom_object(
        "gateway.networking.k8s.io", "v1", namespace, "httproutes", "chat"
    )
    return found


def stage(cluster: Cluster, namespace: str) -> tuple[str, int | None]:
    status = mdep(cluster, namespace).get("status") or {}
    return status.get("stage", ""), status.get("step")


def wait_stage(
    cluster: Cluster, namespace: str, wanted: str, step: int | None = None, timeout: float = 120
) -> float:
    start = time.monotonic()

    def reached() -> bool:
        now_stage, now_step = stage(cluster, namespace)
        if now_stage in ("RolledBack",) and wanted != "RolledBack":
            history = mdep(cluster, namespace)["status"].get("history", [])
            raise AssertionError(f"rolled back while waiting for {wanted}: {history[-3:]}")
        return now_stage == wanted and (step is None or now_step == step)

    eventually(reached, timeout=timeout, message=f"stage {wanted} step {step}: {stage(cluster, namespace)}")
    return time.monotonic() - start


def secret(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl(
        "create",
        "secret",
        "generic",
        "s3",
        "-n",
        namespace,
        f"--from-literal=AWS_ACCESS_KEY_ID={ACCESS_KEY}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={SECRET_KEY}",
    )


def serving_ready(cluster: Cluster, namespace: str, gateway: dict[str, str]) -> None:
    def answers() -> bool:
        ready = any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (mdep(cluster, namespace).get("status") or {}).get("conditions", [])
        )
        if not ready:
            return False
        request = urllib.request.Request(f"{gateway['url']}/v1/models", headers={"Host": f"{namespace}.test"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    eventually(answers, timeout=120, message="the stable version serves through the Gateway")


def set_model(cluster: Cluster, obj: dict[str, Any], version: Version) -> dict[str, Any]:
    changed = json.loads(json.dumps(obj))
    changed["spec"]["model"] = {"uri": version.uri, "digest": version.digest}
    apply(cluster, changed)
    return changed


def within_tolerance(share: float, count: int, weight: float) -> bool:
    sd = (weight * (1 - weight) / max(1, count)) ** 0.5
    return abs(share - weight) <= SPLIT_SIGMAS * sd + 0.02


def promoted_by_a_job(cluster: Cluster, namespace: str, s3: S3Server, version: Version) -> None:
    """A FineTuneJob that names the deployment and ends Succeeded with `version` promoted: once the operator
    has taken it, its status is written as the job's own run would leave it (no training runs here)."""
    job = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "tune-good", "namespace": namespace},
        "spec": {
            "method": "sft",
            "baseModel": {"uri": "builtin://smollm2-135m-instruct"},
            "datasets": {"training": {"uri": "s3://models/data/train.jsonl"}},
            "storage": {"bucket": BUCKET, "endpoint": s3.endpoint},
            "evalGateRef": {"name": "gate"},
            "outputUri": f"s3://{BUCKET}/line",
            "deployment": {"name": "chat"},
        },
    }
    apply(cluster, job)
    eventually(
        lambda: (cluster.ftj(namespace, "tune-good").get("status") or {}).get("phase") == "ValidatingData",
        timeout=30,
        message="the operator took the job (its validation never runs: this kubelet runs no Jobs)",
    )
    cluster.custom.patch_namespaced_custom_object_status(
        "finetune.dev",
        "v1alpha1",
        namespace,
        "finetunejobs",
        "tune-good",
        {
            "status": {
                "phase": "Succeeded",
                "promoted": {
                    "uri": version.uri,
                    "digest": version.digest,
                    "promotedAt": "2026-11-27T00:00:00Z",
                },
            }
        },
    )


def publish_versions(s3: S3Server, folder: Path) -> dict[str, Version]:
    """The model line's versions, trained (a few seconds each) and promoted into `BUCKET`."""
    s3_client(s3.endpoint).create_bucket(Bucket=BUCKET)
    store = Store(endpoint=s3.endpoint)
    made = {
        "stable": answering_model(folder / "stable", YES, seed=0),
        "good": answering_model(folder / "good", YES, seed=1),
        "worse": answering_model(folder / "worse", NO, seed=2),
        "slow": answering_model(folder / "slow", YES, hidden_size=768, layers=12, steps=0, seed=3),
    }
    published = {}
    credentials = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    with mock.patch.dict(os.environ, credentials):
        for name, model_dir in made.items():
            promotion = publish_version(model_dir, f"s3://{BUCKET}/line", name, store)
            published[name] = Version(promotion.uri, promotion.digest)
    return published
