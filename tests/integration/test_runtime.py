"""The operator's reconcile loop on a real API server, when reconcile itself breaks: an error that is not a
Kubernetes API error (a ValueError, an aiohttp-style timeout) is logged with the job's name and its
traceback, retried with backoff, reported on the job as a ReconcileError condition after repeated
failures, and once the fault clears the job goes on and the condition says it recovered.

The fault is injected (no real component raises a ValueError inside reconcile on demand); the API server,
the loop, its backoff and its writes are the real ones."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from finetune_api.v1alpha1 import FineTuneJob
from finetune_operator.handlers import parse
from finetune_operator.handlers.observe import INDEXES, Observer
from finetune_operator.handlers.runtime import FAILURES_TO_REPORT, Runtime
from finetune_operator.kube.client import KubeClient
from finetune_operator.observed import Decision, Observed
from finetune_operator.reconcile import reconcile
from finetune_operator.settings import Settings
from helpers.argocd import health
from helpers.kube import Cluster
from helpers.support import example

NAMESPACE = "runtime-faults"
NAME = "flaky"


def faults() -> Iterator[Exception]:
    yield ValueError("injected: a value reconcile cannot handle")
    yield TimeoutError("injected: a read timed out")
    yield RuntimeError("injected: something else entirely")


def condition(body: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in body.get("status", {}).get("conditions", []) if c["type"] == type_), None)


async def drive(cluster: Cluster, kubeconfig: str, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Run the loop of one job whose first reconciles fail; feed it the newest body as a watch would. The
    job's bodies as they were seen, until its condition says it recovered."""
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    kube = KubeClient.connect()
    pending = faults()

    def flaky(observed: Observed, settings: Settings) -> Decision:
        fault = next(pending, None)
        if fault is not None:
            raise fault
        return reconcile(observed, settings)

    runtime = Runtime(kube, Observer(kube, Settings()), catch_up_seconds=0.2, reconcile_fn=flaky)
    indexes: dict[str, dict[Any, Any]] = {name: {} for name in INDEXES}
    seen: list[dict[str, Any]] = []
    try:
        for _ in range(300):  # about 30 s: 3 failures back off 1 + 2 s, then one success
            body = await asyncio.to_thread(cluster.ftj, NAMESPACE, NAME)
            seen.append(body)
            runtime.feed(NAMESPACE, NAME, parse.essence(body), indexes)
            recovered = condition(body, "ReconcileError")
            if recovered is not None and recovered["status"] == "False":
                break
            await asyncio.sleep(0.1)
    finally:
        await runtime.close()
        await kube.close()
    return seen


def test_a_loop_that_meets_non_api_errors_says_so_on_the_job_and_recovers(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cluster.kubectl("create", "namespace", NAMESPACE)
    # what the example names exists, so that only the injected faults hold the job
    cluster.kubectl("create", "secret", "generic", "finetune-s3", "-n", NAMESPACE)
    cluster.kubectl("create", "serviceaccount", "finetune-trainer", "-n", NAMESPACE)
    doc = example("sft-support-assistant.yaml")
    doc["metadata"] |= {"name": NAME, "namespace": NAMESPACE}
    doc["spec"].pop("evalGateRef")
    doc["spec"].pop("outputUri")
    doc["spec"].pop("deployment", None)
    FineTuneJob.model_validate(doc)
    cluster.custom.create_namespaced_custom_object("finetune.dev", "v1alpha1", NAMESPACE, "finetunejobs", doc)

    caplog.set_level(logging.INFO, logger="finetune_operator")
    seen = asyncio.run(drive(cluster, str(cluster.plane.kubeconfig), monkeypatch))

    body = next((b for b in seen if (c := condition(b, "ReconcileError")) and c["status"] == "True"), None)
    assert body is not None, "the job never said its reconcile kept failing"
    failing = condition(body, "ReconcileError")
    assert failing is not None
    assert failing["reason"] == "ReconcileFailing"
    assert f"{FAILURES_TO_REPORT} or more times in a row" in failing["message"]
    assert "RuntimeError: injected: something else entirely" in failing["message"]
    assert health(body) == ("Degraded", f"the operator cannot reconcile this job: {failing['message']}")

    final = seen[-1]
    assert condition(final, "ReconcileError") == condition(final, "ReconcileError") | {
        "status": "False",
        "reason": "Reconciled",
    }
    assert final["status"]["phase"] == "ValidatingData"  # the job went on where it stood
    assert health(final)[0] == "Progressing"
    assert cluster.job_names(NAMESPACE) == [f"{NAME}-validate"]

    lines = [r for r in caplog.records if r.name == "finetune_operator"]
    failures = [r for r in lines if "reconcile failed" in r.getMessage()]
    assert len(failures) == 3
    assert all(r.getMessage().startswith(f"[{NAMESPACE}/{NAME}]") for r in failures)
    assert all(r.exc_info is not None for r in failures)  # the traceback, for a bug nobody expected
    assert [r.getMessage().split("retrying in ")[1].split("s:")[0] for r in failures] == ["1", "2", "4"]
