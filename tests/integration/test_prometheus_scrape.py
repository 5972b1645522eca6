"""Metrics as a user's Prometheus sees them: a real Prometheus (Debian's) scrapes the operator and a real
trainer pod while a gated FineTuneJob goes from creation to a promoted version, and the series the
dashboard and the alerts read are there with the labels docs/metrics.md promises. `promtool check metrics`
accepts both endpoints' output."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from helpers import grafana
from helpers.datagen import chat_rows, jsonl
from helpers.kube import Cluster
from helpers.operator_process import OperatorProcess
from helpers.podrun import Exited, run_job
from helpers.processes import free_port
from helpers.prometheus import Prometheus, prometheus, promtool
from helpers.s3server import ACCESS_KEY, SECRET_KEY, S3Server
from helpers.s3server import client as s3_client
from helpers.scenario import BUCKET, NAME, OUTPUT, Scenario, evaluation, new_scenario
from helpers.support import eventually, example, merge_patch

SECRETS = {"finetune-s3": {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}}


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"operator": free_port(), "trainer": free_port()}


@pytest.fixture(scope="module")
def operator_with_metrics(
    cluster: Cluster, ports: dict[str, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    env = {"FINETUNE_METRICS_PORT": str(ports["operator"])}
    process = OperatorProcess(cluster.plane.kubeconfig, tmp_path_factory.mktemp("operator"), (), env).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def prom(ports: dict[str, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    targets = {name: [f"127.0.0.1:{port}"] for name, port in ports.items()}
    with prometheus(tmp_path_factory.mktemp("prometheus"), targets) as server:
        yield server


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
        return text


def check_metrics(text: str) -> None:
    """promtool's linter: naming, units, help texts, counters' _total."""
    result = promtool("check", "metrics", stdin=text)
    assert result.returncode == 0, result.stdout + result.stderr


def run_scraped(
    manifest: dict[str, Any], root: Path, configmaps: dict[str, Any], port: int
) -> tuple[Exited, str]:
    """Run the training pod (its metrics port moved to `port`), reading its /metrics while it runs."""
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    for var in container["env"]:
        if var["name"] == "FINETUNE_METRICS_PORT":
            var["value"] = str(port)
    result: list[Exited] = []
    pod = threading.Thread(
        target=lambda: result.append(run_job(manifest, root, configmaps=configmaps, secrets=SECRETS))
    )
    pod.start()
    last = ""
    while pod.is_alive():
        try:
            text = scrape(port)
        except OSError:
            text = ""
        if "finetune_trainer_step{" in text:
            last = text
        pod.join(0.2)
    return result[0], last


def upload_run_inputs(scenario: Scenario, tiny: Path) -> dict[str, Any]:
    """The tiny model and a small chat dataset in the scenario's bucket: the job's spec for them."""
    storage = s3_client(scenario.s3.endpoint)
    prefix = f"inputs/{scenario.namespace}/"
    for path in tiny.iterdir():
        storage.put_object(Bucket=BUCKET, Key=f"{prefix}model/{path.name}", Body=path.read_bytes())
    storage.put_object(Bucket=BUCKET, Key=f"{prefix}train.jsonl", Body=jsonl(chat_rows(96, seed=11)))
    storage.put_object(Bucket=BUCKET, Key=f"{prefix}val.jsonl", Body=jsonl(chat_rows(8, seed=12)))
    return {
        "baseModel": {"uri": f"s3://{BUCKET}/{prefix}model/", "revision": None},
        "datasets": {
            "training": {"uri": f"s3://{BUCKET}/{prefix}train.jsonl"},
            "validation": {"uri": f"s3://{BUCKET}/{prefix}val.jsonl"},
            "holdout": None,
        },
        "hyperparameters": {
            "epochs": 2,
            "batchSize": 2,
            "learningRateMultiplier": None,
            "learningRate": 0.005,
            "maxSeqLength": 128,
            "packing": False,
        },
        "dataGates": None,
        "earlyStopping": None,
        "checkpointing": {"saveSteps": 48, "keepLast": 1},
        "evalGateRef": {"name": "support-release"},
        "outputUri": OUTPUT,
    }


def test_prometheus_scrapes_the_operator_and_a_trainer_through_a_promoted_run(
    cluster: Cluster,
    s3: S3Server,
    tiny: Path,
    tmp_path: Path,
    ports: dict[str, int],
    operator_with_metrics: OperatorProcess,
    prom: Prometheus,
) -> None:
    scenario = new_scenario(cluster, s3)
    ns = scenario.namespace
    gate = merge_patch(example("evalgate-support-release.yaml"), {"spec": {"requireApproval": False}})
    gate["spec"].pop("approvers", None)
    gate["metadata"]["namespace"] = ns
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(gate))
    scenario.apply({"spec": upload_run_inputs(scenario, tiny)})
    scenario.validate()

    # the training pod, for real: the tiny model on the uploaded rows, its gauges scraped as it runs
    scenario.wait_job(f"{NAME}-train-1")
    scenario.wait_phase("Training")
    manifest = json.loads(cluster.kubectl("get", "job", f"{NAME}-train-1", "-n", ns, "-o", "json").stdout)
    config = json.loads(cluster.kubectl("get", "configmap", "-n", ns, "-o", "json").stdout)
    configmaps = {c["metadata"]["name"]: c.get("data", {}) for c in config["items"]}
    exited, trainer_text = run_scraped(manifest, tmp_path / "train", configmaps, ports["trainer"])
    assert exited.returncode == 0, exited.output
    assert "training complete at step 96" in exited.output
    assert trainer_text, "the trainer's /metrics never answered while it trained"
    check_metrics(trainer_text)
    cluster.finish_job(ns, f"{NAME}-train-1")

    # gate (passing) and promotion, played as in the operator tests
    scenario.wait_job(f"{NAME}-evaluate")
    scenario.put("eval/report.json", evaluation())
    cluster.finish_job(ns, f"{NAME}-evaluate")
    promote = scenario.wait_job(f"{NAME}-promote")
    target = json.loads(promote.spec.template.metadata.annotations["finetune.dev/trainer-config"])
    scenario.publish(target["promotion"]["versionUri"])
    scenario.wait_phase("Succeeded")

    job = f'namespace="{ns}", finetunejob="{NAME}"'
    # the trainer, as Prometheus kept it (range functions: the target is gone, its series marked stale)
    steps = prom.wait_for(f"max_over_time(finetune_trainer_step{{{job}}}[10m]) > 0")
    assert steps[0]["metric"]["method"] == "sft"
    assert steps[0]["metric"]["run_id"] == scenario.status["runId"]
    for gauge in ("total_steps", "loss", "tokens_per_second", "eta_seconds", "last_step_timestamp_seconds"):
        assert prom.query(f"max_over_time(finetune_trainer_{gauge}{{{job}}}[10m])"), gauge
    assert prom.query(f"max_over_time(finetune_trainer_total_steps{{{job}}}[10m]) == 96")
    # no accelerator here: MFU and accelerator memory are absent, not zero
    assert not prom.query("max_over_time(finetune_trainer_mfu[10m])")
    assert not prom.query("max_over_time(finetune_trainer_accelerator_memory_total_bytes[10m])")

    operator_series_after_promotion(prom, ns)
    dashboard_answers_from_the_operator(prom, ns)
    check_metrics(scrape(ports["operator"]))


def operator_series_after_promotion(prom: Prometheus, ns: str) -> None:
    """The operator's series once a gated job in `ns` was promoted: the fleet, the transitions, the
    gate and the promotion."""

    def counted(expr: str) -> float:
        found = prom.wait_for(expr, timeout=30)
        return float(found[0]["value"][1])

    assert counted(f'finetune_operator_jobs{{namespace="{ns}", phase="Succeeded", method="sft"}} == 1') == 1
    assert counted(f'finetune_operator_jobs{{namespace="{ns}", phase="Training"}} == 0') == 0
    transitions = prom.wait_for(f'finetune_operator_job_phase_transitions_total{{namespace="{ns}"}} > 0')
    seen = {(t["metric"]["from_phase"], t["metric"]["to_phase"]) for t in transitions}
    assert {
        ("Pending", "ValidatingData"),
        ("ValidatingData", "Training"),
        ("Training", "Evaluating"),
        ("Evaluating", "Promoting"),
        ("Promoting", "Succeeded"),
    } <= seen, seen
    assert counted('finetune_operator_job_phase_duration_seconds_count{phase="Training", method="sft"}') >= 1
    verdicts = f'finetune_operator_gate_verdicts_total{{namespace="{ns}", gate="support-release"}}'
    (verdict,) = prom.wait_for(f"{verdicts} > 0")
    assert verdict["metric"]["verdict"] == "Passed"
    checks = prom.wait_for(f'finetune_operator_gate_checks_total{{namespace="{ns}", result="passed"}} > 0')
    assert {c["metric"]["suite"] for c in checks} >= {"helpfulness", "refusals", "toxicity"}
    assert counted(f'finetune_operator_promotions_total{{namespace="{ns}", result="succeeded"}}') == 1
    assert counted("finetune_operator_reconcile_duration_seconds_count") > 0
    assert prom.wait_for('finetune_operator_build_info{version!=""}')
    # a finished job leaves the "stuck" gauge: only unfinished jobs are timed
    assert not prom.query(f'finetune_operator_job_phase_entered_timestamp_seconds{{namespace="{ns}"}}')
    # no label Prometheus would rename
    names = {label for series in prom.query('{__name__=~"finetune_.*"}') for label in series["metric"]}
    assert not names & {"exported_job", "exported_instance", "exported_namespace"}, names


# The dashboard's fleet and health panels that a promoted run (no failure, no queue, no error) fills.
ANSWERED = {"Jobs by phase", "Jobs succeeded per day", "Gate verdicts", "Operator up", "Version",
            "Reconcile duration", "Reconcile loops"}  # fmt: skip


def dashboard_answers_from_the_operator(prom: Prometheus, ns: str) -> None:
    """The shipped dashboard's queries on the real operator's series (not only on series shaped like
    docs/metrics.md, as test_dashboard does)."""
    values = {"$namespace": ns, "${namespace}": ns, "$__range": "1h", "$__rate_interval": "1m"}
    found = [q for q in grafana.queries(grafana.load()) if q.panel in ANSWERED]
    assert {q.panel for q in found} == ANSWERED
    for query in found:
        expr = grafana.substitute(query.expr, values)
        assert prom.wait_for(expr, timeout=30), f"{query.row} / {query.panel}: {expr}"


def test_a_waiting_job_is_timed_from_the_phase_it_waits_in(
    cluster: Cluster, s3: S3Server, operator_with_metrics: OperatorProcess, prom: Prometheus
) -> None:
    """The "stuck" alerts' series: an unfinished job's phase and since when, and what it waits for."""
    scenario = new_scenario(cluster, s3)
    scenario.apply({"spec": {"resources": {"queueName": "gpu-queue"}}})
    scenario.validate()
    scenario.wait_job(f"{NAME}-train-1")
    status = scenario.wait_phase("Pending")
    # The job was Pending before validation too, without a reason: until the next scrape that series is
    # still the latest, so the queued one is waited for by its reason (absent: no series, a failure).
    selector = f'namespace="{scenario.namespace}", finetunejob="{NAME}", phase="Pending", reason="Queued"'
    (series,) = prom.wait_for(f"finetune_operator_job_phase_entered_timestamp_seconds{{{selector}}}")
    since = status["lastPhaseTransitionTime"]
    expected = datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp()
    assert float(series["value"][1]) == pytest.approx(expected, abs=1)
    assert eventually(
        lambda: prom.query(
            f'finetune_operator_jobs{{namespace="{scenario.namespace}", phase="Pending"}} == 1'
        ),
        30,
        "the queued job is not counted Pending",
    )
    # Kueue admits it (the test plays Kueue: unsuspends the Job): the wait is observed per queue
    cluster.kubectl(
        "patch", "job", f"{NAME}-train-1", "-n", scenario.namespace, "-p", '{"spec":{"suspend":false}}'
    )
    scenario.wait_phase("Training")
    waited = prom.wait_for('finetune_operator_queue_wait_seconds_count{queue="gpu-queue", method="sft"} >= 1')
    assert float(waited[0]["value"][1]) >= 1


def test_the_first_data_gate_failure_in_a_namespace_is_seen_by_increase(
    cluster: Cluster, s3: S3Server, operator_with_metrics: OperatorProcess, prom: Prometheus
) -> None:
    """What the alerts and the dashboard's failure panel ask: `increase()` over the failures counter
    counts the very first failure, because the operator created the series at 0 when it saw the job."""
    scenario = new_scenario(cluster, s3)
    scenario.apply()
    ns = scenario.namespace
    scenario.wait_job(f"{NAME}-validate")
    failures = f'finetune_operator_job_failures_total{{namespace="{ns}", reason="DataGatesFailed"}}'
    prom.wait_for(f"{failures} == 0")  # scraped at 0 (a real validation outlasts a scrape interval)
    scenario.report(passed=False, duplicate_rate=0.2, failed_rules=["duplicate rate 20% > 2%"])
    cluster.finish_job(ns, f"{NAME}-validate")
    scenario.wait_phase("Failed")
    (found,) = prom.wait_for(f"increase({failures}[5m]) > 0")
    assert float(found["value"][1]) > 0
