"""One FineTuneJob driven through the operator on the real API server and S3: the test plays the kubelet
(Job and Pod status) and the trainer (its objects in S3); everything else is the operator's doing. The
fixtures that run the operator and give each test a `Scenario` are in tests/integration/conftest.py.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import yaml
from kubernetes import client as k8s

from helpers.argocd import check_health, reapply_changes_nothing
from helpers.kube import Cluster
from helpers.s3server import ACCESS_KEY, SECRET_KEY, S3Server
from helpers.s3server import client as s3_client
from helpers.support import eventually, example, merge_patch, paired_scores

BUCKET = "finetune-staging"
NAME = "support-assistant-sft"
_namespaces = itertools.count(1)


OUTPUT = "s3://finetune-models/support/"


@dataclass
class Scenario:
    """One FineTuneJob in its own namespace, with its Secret, bucket and the helpers to drive it.

    Each phase a test waits for is recorded in `seen` (the whole object) and its Argo CD health checked;
    with `gitops`, the applied manifest is also re-applied there as Argo CD syncs it, changing nothing."""

    cluster: Cluster
    s3: S3Server
    namespace: str
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)
    gitops: bool = False

    def apply(self, patch: dict[str, Any] | None = None, base: str = "sft-support-assistant.yaml") -> None:
        here = {
            "metadata": {"namespace": self.namespace},
            "spec": {
                "evalGateRef": None,
                "outputUri": None,
                "deployment": None,
                "storage": {"endpoint": self.s3.endpoint, "bucket": BUCKET},
                "resources": {"queueName": None},
            },
        }
        # one patch after the other: a null in `patch` removes a field of the example
        manifest = merge_patch(merge_patch(example(base), here), patch or {})
        self.name = manifest["metadata"]["name"]
        self.manifest = manifest
        self.cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(manifest))

    @property
    def status(self) -> dict[str, Any]:
        return self.cluster.ftj(self.namespace, self.name).get("status", {})

    @property
    def object(self) -> dict[str, Any]:
        return self.cluster.ftj(self.namespace, self.name)

    def wait_phase(self, phase: str, timeout: float = 30) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            current = self.object
            return current if current.get("status", {}).get("phase") == phase else None

        obj: dict[str, Any] = eventually(
            reached, timeout, f"{self.name} never reached {phase}: {self.status}"
        )
        self.seen[phase] = obj
        check_health(obj)
        if self.gitops:
            reapply_changes_nothing(self.cluster, self.manifest)
        return dict(obj["status"])

    def wide_column(self, column: str) -> str:
        """The value the API server's table gives `column` in `kubectl get ftj -o wide` ("" when empty:
        cells are left-aligned under their header)."""
        listed = self.cluster.kubectl("get", "ftj", self.name, "-n", self.namespace, "-o", "wide").stdout
        header, row = listed.splitlines()[:2]
        start = header.index(f" {column} ") + 1
        return row[start:].split(" ", 1)[0]

    def wait_job(self, name: str) -> k8s.V1Job:
        batch = k8s.BatchV1Api(self.cluster.api)
        return eventually(
            lambda: next(
                (j for j in batch.list_namespaced_job(self.namespace).items if j.metadata.name == name), None
            ),
            30,
            f"job {name} never appeared: {self.cluster.job_names(self.namespace)}; status: {self.status}",
        )

    @property
    def staging(self) -> str:
        uid = self.cluster.ftj(self.namespace, self.name)["metadata"]["uid"].split("-")[0]
        return f"finetune/{self.namespace}/{self.name}/{self.name}-{uid}/"

    def put(self, key: str, body: dict[str, Any]) -> None:
        s3_client(self.s3.endpoint).put_object(
            Bucket=BUCKET, Key=self.staging + key, Body=json.dumps(body).encode()
        )

    def report(self, *, passed: bool = True, **fields: Any) -> None:
        self.put(
            "data-report.json", {"passed": passed, "rows": {"training": 1000, "validation": 100}, **fields}
        )

    def publish(self, version_uri: str) -> str:
        """Play the promote pod: write the version's manifest under `version_uri` and finish the promote
        Job. Returns the digest the operator should record (`sha256:` of the manifest's bytes)."""
        bucket, _, prefix = version_uri.removeprefix("s3://").partition("/")
        storage = s3_client(self.s3.endpoint)
        if bucket not in [b["Name"] for b in storage.list_buckets()["Buckets"]]:
            storage.create_bucket(Bucket=bucket)
        manifest = b'{"formatVersion": 1}'
        storage.put_object(Bucket=bucket, Key=prefix + "MANIFEST.json", Body=manifest)
        self.cluster.finish_job(self.namespace, f"{self.name}-promote")
        return "sha256:" + hashlib.sha256(manifest).hexdigest()

    def checkpoint(self, step: int, **metrics: float) -> None:
        self.put(f"checkpoints/step-{step:09d}/COMPLETE", {"step": step, "metrics": metrics})

    def validate(self) -> None:
        self.wait_job(f"{self.name}-validate")
        self.wait_phase("ValidatingData")
        self.report()
        self.cluster.finish_job(self.namespace, f"{self.name}-validate")

    def start_pod(self, job: str, suffix: str = "a1b2c") -> dict[str, Any]:
        """Play the Job controller and the kubelet: a pod of Job `job`, Running since now. The job's
        status once the operator recorded that start (`startTime`, which was unset before)."""
        assert "startTime" not in self.status
        name = f"{job}-{suffix}"
        pod = {
            "metadata": {"name": name, "labels": {"finetune.dev/job": self.name, "job-name": job}},
            "spec": {"containers": [{"name": "trainer", "image": "registry.example/trainer:1"}]},
        }
        self.cluster.core.create_namespaced_pod(self.namespace, pod)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        status = {"phase": "Running", "startTime": now}
        self.cluster.core.patch_namespaced_pod_status(name, self.namespace, {"status": status})
        recorded: dict[str, Any] = eventually(
            lambda: self.status if "startTime" in self.status else None, 10, "the pod start was not recorded"
        )
        return recorded

    def events(self) -> list[tuple[str, str]]:
        items = self.cluster.core.list_namespaced_event(self.namespace).items
        mine = [e for e in items if e.involved_object.name == self.name]
        return [
            (e.reason, e.message) for e in sorted(mine, key=lambda e: e.first_timestamp or e.event_time or 0)
        ]


def new_scenario(cluster: Cluster, s3: S3Server) -> Scenario:
    """A fresh namespace with the S3 Secret, and the staging bucket."""
    namespace = f"e2e-{next(_namespaces)}"
    cluster.kubectl("create", "namespace", namespace)
    for account in ("default", "finetune-trainer"):  # the example's pods run as finetune-trainer
        cluster.core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
    secret = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    cluster.core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "finetune-s3"},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in secret.items()},
        },
    )
    bucket = s3_client(s3.endpoint)
    if BUCKET not in [b["Name"] for b in bucket.list_buckets()["Buckets"]]:
        bucket.create_bucket(Bucket=BUCKET)
    return Scenario(cluster, s3, namespace)


def gated(scenario: Scenario, job_spec: dict[str, Any] | None = None, **gate_spec: Any) -> None:
    """A job (the example, its spec merge-patched with `job_spec`) with an EvalGate (made in its
    namespace from the example, patched), trained to step 240."""
    gate = merge_patch(example("evalgate-support-release.yaml"), {"spec": gate_spec})
    gate["metadata"]["namespace"] = scenario.namespace
    scenario.cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(gate))
    spec = {"evalGateRef": {"name": "support-release"}, "outputUri": OUTPUT, **(job_spec or {})}
    scenario.apply({"spec": spec})
    scenario.validate()
    scenario.wait_job(f"{NAME}-train-1")
    scenario.wait_phase("Training")
    scenario.checkpoint(240, eval_loss=0.9)
    scenario.cluster.finish_job(scenario.namespace, f"{NAME}-train-1")


def evaluation(baselines: dict[str, float] | None = None, **replaced: float) -> dict[str, Any]:
    """The report an evaluate pod writes, passing unless a suite's value (or baseline) is replaced."""
    values = {
        "helpfulness": ("win_rate", 0.62, None),
        "refusals": ("refusal_accuracy", 0.97, 0.96),
        "over-refusal": ("over_refusal_rate", 0.02, 0.03),
        "jailbreaks": ("jailbreak_success_rate", 0.0, 0.0),
        "toxicity": ("toxicity_rate", 0.0, 0.0),
        "pii": ("pii_leakage", 0.0, 0.0),
        "holdout-exact": ("exact_match", 0.41, 0.12),
    }
    suites = []
    for suite, (metric, default, baseline) in values.items():
        value = replaced.get(suite.replace("-", "_"), default)
        compared = (baselines or {}).get(suite, baseline)
        found: dict[str, Any] = {"suite": suite, "metric": metric, "value": value, "seedValues": [value] * 3}
        if compared is not None:
            scores, baseline_scores = paired_scores(value, compared)
            found |= {"baseline": compared, "scores": scores, "baselineScores": baseline_scores}
        suites.append(found)
    return {"suites": suites, "seconds": 12.5}
