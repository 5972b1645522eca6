"""How fast a rollout acts on what it decides, on real parts (not a test: `make bench`, in the rollout tests'
network namespace: `bash tests/gateway/netns.sh .venv/bin/python bench/rollout_latency.py`).

The testbed is the rollout tests' (tests/helpers/rollouts.py): a real API server, Envoy Gateway with Envoy,
the tests' kubelet running model servers as processes, Prometheus scraping them, versions in SeaweedFS.
Traffic runs through the Gateway all along; which variant answered is the server's `x-finetune-variant`.

1. Decision -> route change. The operator decides to start canary step 1 (weight 30%); the time from the
   decision (the history entry's time in its status) to the first answer by the candidate. Baseline, in the
   same run: the same route change written directly with the API (no operator), to the first answer.
2. Breach -> rollback. A slow candidate (a much larger model) enters canary at 30%; the time from its first
   answer to its last (after that the route no longer names it). Baseline, in the same run: a bare loop with
   the same interval that queries Prometheus with the same PromQL and, on the breach, writes the route back
   itself.

Each measure is repeated (BENCH_ROLLOUT_REPEATS, default 3); the median and the spread are printed with the
ratio operator / baseline.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers.gateway import EnvoyGateway  # noqa: E402
from helpers.kube import Cluster, running_cluster  # noqa: E402
from helpers.kubelet import Kubelet, netns_addresses  # noqa: E402
from helpers.operator_process import OperatorProcess  # noqa: E402
from helpers.prometheus import prometheus  # noqa: E402
from helpers.rollouts import (  # noqa: E402
    LATENCY_RATIO,
    SERVER_PORT,
    apply,
    manifest,
    mdep,
    publish_versions,
    route,
    secret,
    serving_ready,
    set_model,
    traffic,
    wait_stage,
)
from helpers.s3server import running as s3_running  # noqa: E402

REPEATS = int(os.environ.get("BENCH_ROLLOUT_REPEATS", "3"))
INTERVAL = 4  # seconds: the analysis interval of both the operator and the bare loop
LATENCY_LIMIT = 5.0  # the analysis threshold of tests/helpers/rollouts.py


def first(answers: list[tuple[float, int, str]], variant: str, after: float) -> float | None:
    return next((t for t, code, v in answers if t >= after and code == 200 and v == variant), None)


def last(answers: list[tuple[float, int, str]], variant: str) -> float | None:
    return max((t for t, code, v in answers if code == 200 and v == variant), default=None)


def history_time(cluster: Cluster, namespace: str, reason: str) -> float:
    """The monotonic time of the newest history entry with `reason` (the status stamps UTC seconds)."""
    entry = next(h for h in reversed(mdep(cluster, namespace)["status"]["history"]) if h["reason"] == reason)
    at = dt.datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()
    return time.monotonic() - (time.time() - at)


def promql(url: str, query: str) -> float | None:
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': query})}") as answer:
        result = json.load(answer)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def rendered(query: str, namespace: str) -> str:
    values = {"namespace": namespace, "modeldeployment": "chat", "interval": f"{INTERVAL}s"}
    for key, value in values.items():
        query = query.replace("{{ " + key + " }}", value)
    return query


def set_weights(cluster: Cluster, namespace: str, candidate: int) -> None:
    body = route(cluster, namespace)
    for ref in body["spec"]["rules"][0]["backendRefs"]:
        ref["weight"] = candidate if ref["name"].endswith("-candidate") else 100 - candidate
    body["spec"]["rules"][0].pop("filters", None)
    cluster.custom.replace_namespaced_custom_object(
        "gateway.networking.k8s.io", "v1", namespace, "httproutes", "chat", body
    )


class Bench:
    def __init__(self, stack: ExitStack, work: Path) -> None:
        self.work = work
        self.cluster = stack.enter_context(running_cluster(work / "kube"))
        gateway = stack.enter_context(EnvoyGateway(self.cluster, work / "envoy-gateway"))
        self.cluster.kubectl("create", "namespace", "gateway")
        self.gateway = {"name": "bench-gw", "namespace": "gateway"}
        self.gateway["url"] = gateway.gateway("gateway", "bench-gw", 18888)
        self.s3 = stack.enter_context(s3_running(work / "s3"))
        targets = {"model-servers": [f"{a}:{SERVER_PORT}" for a in netns_addresses()]}
        self.prometheus = stack.enter_context(prometheus(work / "prometheus", targets))
        for path in sorted((ROOT / "crds" / "admission").glob("*.yaml")):
            self.cluster.kubectl("apply", "--server-side", "-f", str(path))
        self.versions = publish_versions(self.s3, work / "versions")
        self.stack = stack

    def deployment(
        self, *, steps: list[dict[str, Any]], failure_limit: int = 0
    ) -> tuple[str, dict[str, Any], Kubelet, OperatorProcess]:
        namespace = f"b-{uuid.uuid4().hex[:6]}"
        self.cluster.kubectl("create", "namespace", namespace)
        secret(self.cluster, namespace)
        kubelet = self.stack.enter_context(
            Kubelet(self.cluster.plane.kubeconfig, namespace, self.work / namespace)
        )
        (self.work / namespace / "operator").mkdir(parents=True)
        operator = OperatorProcess(
            self.cluster.plane.kubeconfig, self.work / namespace / "operator", (namespace,)
        )
        operator.start()
        self.stack.callback(operator.stop)
        obj = manifest(
            namespace,
            self.gateway,
            self.versions["stable"],
            self.prometheus.url,
            self.s3,
            shadow=False,
            steps=steps,
        )
        obj["spec"]["rollout"]["canary"]["analysis"]["interval"] = f"{INTERVAL}s"
        obj["spec"]["rollout"]["canary"]["analysis"]["failureLimit"] = failure_limit
        apply(self.cluster, obj)
        serving_ready(self.cluster, namespace, self.gateway)
        return namespace, obj, kubelet, operator

    def route_change(self) -> tuple[float, float]:
        """(operator, direct): seconds from the decision to the candidate's first answer."""
        namespace, obj, kubelet, operator = self.deployment(steps=[{"weight": 30, "duration": "1h"}])
        with traffic(self.gateway["url"], f"{namespace}.test") as sent:
            set_model(self.cluster, obj, self.versions["good"])
            wait_stage(self.cluster, namespace, "Canary", 1, timeout=120)
            kubelet.wait_ready("chat-candidate", 1)
            decided = history_time(self.cluster, namespace, "CanaryStep")
            seen = None
            deadline = time.monotonic() + 60
            while seen is None and time.monotonic() < deadline:
                seen = first(sent.answers, "candidate", decided)
                time.sleep(0.05)
            operator.stop()  # the baseline: the same change written directly
            set_weights(self.cluster, namespace, 0)
            time.sleep(3)
            written = time.monotonic()
            set_weights(self.cluster, namespace, 30)
            direct = None
            while direct is None and time.monotonic() < deadline + 60:
                direct = first(sent.answers, "candidate", written)
                time.sleep(0.05)
        assert seen is not None, "the candidate never answered after the operator's decision"
        assert direct is not None, "the candidate never answered after the direct route change"
        return seen - decided, direct - written

    def rollback(self) -> tuple[float, float]:
        """(operator, bare loop): seconds from a slow candidate's first answer to its last."""
        namespace, obj, _, _ = self.deployment(steps=[{"weight": 30, "duration": "1h"}])
        with traffic(self.gateway["url"], f"{namespace}.test") as sent:
            set_model(self.cluster, obj, self.versions["slow"])
            wait_stage(self.cluster, namespace, "RolledBack", timeout=180)
            time.sleep(2)
            start, end = first(sent.answers, "candidate", 0), last(sent.answers, "candidate")
            assert start is not None
            assert end is not None
            by_operator = end - start
        # the baseline: the operator starts the canary but tolerates every failure; the bare loop decides
        namespace, obj, _kubelet, operator = self.deployment(
            steps=[{"weight": 30, "duration": "1h"}], failure_limit=100
        )
        with traffic(self.gateway["url"], f"{namespace}.test") as sent:
            set_model(self.cluster, obj, self.versions["slow"])
            wait_stage(self.cluster, namespace, "Canary", 1, timeout=120)
            operator.stop()  # from here on the bare loop decides
            query = rendered(LATENCY_RATIO, namespace)
            while True:
                time.sleep(INTERVAL)
                value = promql(self.prometheus.url, query)
                if value is not None and value > LATENCY_LIMIT:
                    set_weights(self.cluster, namespace, 0)
                    break
            time.sleep(3)
            start, end = first(sent.answers, "candidate", 0), last(sent.answers, "candidate")
            assert start is not None
            assert end is not None
        return by_operator, end - start


def report(name: str, pairs: list[tuple[float, float]]) -> None:
    ours = [p[0] for p in pairs]
    base = [p[1] for p in pairs]
    ratios = [a / b for a, b in pairs if b > 0]
    print(
        f"{name}: operator median {statistics.median(ours):.2f}s (range {min(ours):.2f}-{max(ours):.2f}), "
        f"baseline median {statistics.median(base):.2f}s (range {min(base):.2f}-{max(base):.2f}); "
        f"ratio {statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}) "
        f"over {len(pairs)} runs"
    )


def main() -> int:
    if not netns_addresses():
        print(
            "run it in the rollout tests' network namespace: bash tests/gateway/netns.sh <python> " + __file__
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="rollout-bench-") as tmp, ExitStack() as stack:
        bench = Bench(stack, Path(tmp))
        report("decision -> route change", [bench.route_change() for _ in range(REPEATS)])
        report("breach -> rollback", [bench.rollback() for _ in range(REPEATS)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
