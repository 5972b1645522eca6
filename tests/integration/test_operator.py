"""The operator end to end: real kube-apiserver, real S3, `python -m finetune_operator` as a process.

The tests play the kubelet (Job and Pod status) and the trainer (its objects in S3); everything else is
the operator's doing.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from kubernetes import client as k8s

from helpers.argocd import health
from helpers.operator_process import OperatorProcess
from helpers.s3server import ACCESS_KEY, SECRET_KEY
from helpers.s3server import client as s3_client
from helpers.scenario import BUCKET, NAME, OUTPUT, Scenario, evaluation, gated
from helpers.support import eventually


def test_apply_to_succeeded(scenario: Scenario) -> None:
    scenario.apply()
    validation = scenario.wait_job(f"{NAME}-validate")
    scenario.wait_phase("ValidatingData")
    container = validation.spec.template.spec.containers[0]
    assert "nvidia.com/gpu" not in (container.resources.requests or {})
    annotation = validation.spec.template.metadata.annotations["finetune.dev/trainer-config"]
    assert "hyperparameters" not in json.loads(annotation)
    assert ACCESS_KEY not in annotation
    assert SECRET_KEY not in annotation

    scenario.report(duplicate_rate=0.004)
    scenario.cluster.finish_job(scenario.namespace, f"{NAME}-validate")
    train = scenario.wait_job(f"{NAME}-train-1")
    pod = train.spec.template.spec
    assert pod.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    assert pod.security_context.run_as_non_root is True
    assert pod.containers[0].security_context.read_only_root_filesystem is True
    assert train.metadata.owner_references[0].kind == "FineTuneJob"
    assert train.metadata.labels["app.kubernetes.io/managed-by"] == "finetune-operator"
    config = scenario.cluster.core.read_namespaced_config_map(f"{NAME}-trainer", scenario.namespace)
    assert ACCESS_KEY not in config.data["trainer.json"]
    assert SECRET_KEY not in config.data["trainer.json"]
    contract = json.loads(config.data["trainer.json"])
    assert contract["hyperparameters"]["epochs"] == 3
    assert scenario.wait_phase("Training")["dataReport"]["rows"] == {"training": 1000, "validation": 100}
    status = scenario.start_pod(f"{NAME}-train-1")  # maxRuntime and the ETA count from here

    # the trainer reports 120 of 480 steps 10 minutes after training started: 30 minutes to go
    reported = datetime.fromisoformat(status["startTime"]) + timedelta(minutes=10)
    progress = {"step": 120, "totalSteps": 480, "loss": 1.25, "updatedAt": reported.isoformat()}
    scenario.put("progress.json", progress)
    eventually(
        lambda: "120/480" in scenario.cluster.kubectl("get", "ftj", NAME, "-n", scenario.namespace).stdout, 20
    )
    row = (
        scenario.cluster.kubectl("get", "ftj", NAME, "-n", scenario.namespace).stdout.splitlines()[1].split()
    )
    assert row[1:6] == ["Training", "sft", "120/480", "(25%)", "1.25"]
    assert scenario.wide_column("ETA") == "30m"
    assert health(scenario.object) == ("Progressing", "Training: step 120/480 (25%), 30m left")

    scenario.checkpoint(240, eval_loss=0.9)
    scenario.checkpoint(480, eval_loss=1.1)
    scenario.cluster.finish_job(scenario.namespace, f"{NAME}-train-1")
    status = scenario.wait_phase("Succeeded")
    assert [c["step"] for c in status["checkpoints"]] == [240, 480]
    assert status["bestCheckpoint"]["step"] == 240
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions["DataValidated"] == ("True", "DataGatesPassed")
    assert conditions["Trained"] == ("True", "TrainingComplete")
    assert conditions["Succeeded"] == ("True", "Completed")
    waited = scenario.cluster.kubectl(
        "wait", "--for=condition=Succeeded", f"ftj/{NAME}", "-n", scenario.namespace, "--timeout=5s"
    )
    assert "condition met" in waited.stdout
    reasons = [
        r for r, _ in eventually(lambda: scenario.events() if len(scenario.events()) >= 3 else None, 10)
    ]
    # each transition told once (events carry 1 s timestamps, so neighbours may tie and swap places)
    assert sorted(reasons) == sorted(["ValidationRunning", "TrainingRunning", "Completed"])
    assert reasons[-1] == "Completed"
    assert any(m.startswith("data gates passed (1000 training rows") for _, m in scenario.events())
    assert scenario.cluster.job_names(scenario.namespace) == [f"{NAME}-train-1", f"{NAME}-validate"]


def test_failed_data_gates_end_failed_with_the_rule(scenario: Scenario) -> None:
    scenario.gitops = True
    scenario.apply()
    scenario.wait_job(f"{NAME}-validate")
    scenario.report(
        passed=False, duplicate_rate=0.041, failed_rules=["duplicate rate 4.1% > 2.0% (41 of 1000 rows)"]
    )
    scenario.cluster.finish_job(scenario.namespace, f"{NAME}-validate", failed=True)
    status = scenario.wait_phase("Failed")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "DataGatesFailed"
    assert "duplicate rate 4.1% > 2.0% (41 of 1000 rows)" in failed["message"]
    assert status["dataReport"]["duplicateRate"] == 0.041
    assert health(scenario.seen["Failed"]) == ("Degraded", f"Failed (DataGatesFailed): {failed['message']}")
    assert scenario.cluster.job_names(scenario.namespace) == [f"{NAME}-validate"]  # no GPU was ever asked for


def test_failed_attempts_resume_then_fail_at_the_retry_limit(scenario: Scenario) -> None:
    scenario.apply({"spec": {"runPolicy": {"retryLimit": 1}}})
    scenario.validate()
    scenario.wait_job(f"{NAME}-train-1")
    scenario.checkpoint(200)
    scenario.cluster.finish_job(scenario.namespace, f"{NAME}-train-1", failed=True, message="OOMKilled")
    scenario.wait_job(f"{NAME}-train-2")
    assert eventually(lambda: scenario.status.get("attempts") == 2, 10)
    messages = [m for _, m in scenario.events()]
    assert any("attempt 2 started" in m and "resumes from step 200" in m for m in messages)
    scenario.cluster.finish_job(scenario.namespace, f"{NAME}-train-2", failed=True, message="NCCL timeout")
    status = scenario.wait_phase("Failed")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "RetryLimitExceeded"
    assert "NCCL timeout" in failed["message"]


def test_suspend_stops_pods_and_resume_continues(scenario: Scenario) -> None:
    scenario.gitops = True  # a sync that does not name spec.suspend leaves the user's suspension alone
    scenario.apply()
    scenario.validate()
    scenario.wait_job(f"{NAME}-train-1")
    scenario.checkpoint(300)
    scenario.cluster.kubectl(
        "patch", "ftj", NAME, "-n", scenario.namespace, "--type=merge", "-p", '{"spec": {"suspend": true}}'
    )
    status = scenario.wait_phase("Suspended")
    suspended = next(c for c in status["conditions"] if c["type"] == "Suspended")
    assert f"unsuspend to resume training from step 300 (job {NAME}-train-1)" in suspended["message"]
    assert health(scenario.seen["Suspended"]) == ("Suspended", suspended["message"])
    assert eventually(lambda: scenario.wait_job(f"{NAME}-train-1").spec.suspend, 10)
    scenario.cluster.kubectl(
        "patch", "ftj", NAME, "-n", scenario.namespace, "--type=merge", "-p", '{"spec": {"suspend": false}}'
    )
    scenario.wait_phase("Training")
    assert eventually(lambda: not scenario.wait_job(f"{NAME}-train-1").spec.suspend, 10)
    assert scenario.cluster.job_names(scenario.namespace) == [f"{NAME}-train-1", f"{NAME}-validate"]


def test_suspend_during_validation_stops_its_job_and_resume_finishes_it(scenario: Scenario) -> None:
    scenario.apply()
    validation = f"{NAME}-validate"
    uid = scenario.wait_job(validation).metadata.uid
    scenario.wait_phase("ValidatingData")
    scenario.cluster.kubectl(
        "patch", "ftj", NAME, "-n", scenario.namespace, "--type=merge", "-p", '{"spec": {"suspend": true}}'
    )
    status = scenario.wait_phase("Suspended")
    suspended = next(c for c in status["conditions"] if c["type"] == "Suspended")
    assert f"unsuspend to resume the data validation (job {validation})" in suspended["message"]
    assert eventually(lambda: scenario.wait_job(validation).spec.suspend, 10)
    scenario.cluster.kubectl(
        "patch", "ftj", NAME, "-n", scenario.namespace, "--type=merge", "-p", '{"spec": {"suspend": false}}'
    )
    scenario.wait_phase("ValidatingData")
    assert eventually(lambda: not scenario.wait_job(validation).spec.suspend, 10)
    resumed = next(c for c in scenario.status["conditions"] if c["type"] == "Suspended")
    assert (resumed["status"], resumed["reason"]) == ("False", "Resumed")
    scenario.report()
    scenario.cluster.finish_job(scenario.namespace, validation)
    scenario.wait_job(f"{NAME}-train-1")
    assert scenario.wait_job(validation).metadata.uid == uid  # the same Job resumed, none re-created
    assert scenario.cluster.job_names(scenario.namespace) == [f"{NAME}-train-1", validation]


def test_a_missing_secret_holds_the_job_before_any_job_until_it_is_created(scenario: Scenario) -> None:
    scenario.apply({"spec": {"storage": {"credentialsSecretRef": {"name": "late-s3"}}}})

    def resolved() -> dict[str, Any] | None:
        return next(
            (c for c in scenario.status.get("conditions", []) if c["type"] == "ReferencesResolved"), None
        )

    held = eventually(resolved, 15)
    assert (held["status"], held["reason"]) == ("False", "SecretNotFound")
    assert (
        f"Secret late-s3 (spec.storage.credentialsSecretRef.name) not found in namespace {scenario.namespace}"
        in (held["message"])
    )
    time.sleep(3)  # several looks later, still nothing started
    assert scenario.cluster.job_names(scenario.namespace) == []
    assert scenario.status["phase"] == "Pending"
    assert [r for r, _ in scenario.events()] == ["SecretNotFound"]  # told once
    scenario.cluster.core.create_namespaced_secret(
        scenario.namespace,
        {
            "metadata": {"name": "late-s3"},
            "stringData": {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY},
        },
    )
    scenario.wait_job(f"{NAME}-validate")
    assert eventually(lambda: (c := resolved()) is not None and c["status"] == "True", 10)
    scenario.validate()
    scenario.wait_job(f"{NAME}-train-1")


def test_kueue_queue_label_and_suspended_creation(scenario: Scenario) -> None:
    scenario.apply({"spec": {"resources": {"queueName": "ml-training"}}})
    scenario.validate()
    train = scenario.wait_job(f"{NAME}-train-1")
    assert train.metadata.labels["kueue.x-k8s.io/queue-name"] == "ml-training"
    assert train.spec.suspend is True
    status = scenario.wait_phase("Pending")
    queued = next(c for c in status["conditions"] if c["type"] == "PodsScheduled")
    assert (queued["status"], queued["reason"]) == ("False", "Queued")
    assert health(scenario.seen["Pending"]) == ("Progressing", f"Pending: {queued['message']}")
    # Kueue admits it: the operator leaves the admission alone and reports training
    k8s.BatchV1Api(scenario.cluster.api).patch_namespaced_job(
        f"{NAME}-train-1", scenario.namespace, {"spec": {"suspend": False}}
    )
    scenario.wait_phase("Training")


def test_pending_pod_reasons_surface(scenario: Scenario) -> None:
    scenario.apply()
    scenario.validate()
    scenario.wait_job(f"{NAME}-train-1")
    pod = {
        "metadata": {
            "name": f"{NAME}-train-1-abcde",
            "labels": {"finetune.dev/job": NAME, "job-name": f"{NAME}-train-1"},
        },
        "spec": {"containers": [{"name": "trainer", "image": "registry.example/missing:1"}]},
    }
    scenario.cluster.core.create_namespaced_pod(scenario.namespace, pod)
    scenario.cluster.core.patch_namespaced_pod_status(
        pod["metadata"]["name"],
        scenario.namespace,
        {
            "status": {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
                    }
                ],
            }
        },
    )

    def scheduled() -> dict[str, Any] | None:
        cond = next((c for c in scenario.status.get("conditions", []) if c["type"] == "PodsScheduled"), None)
        return cond if cond and cond["reason"] == "Unschedulable" else None

    cond = eventually(scheduled, 15)
    assert "Insufficient nvidia.com/gpu" in cond["message"]


def test_max_runtime_counts_from_the_first_pod_start_then_fails_and_stops_the_job(
    scenario: Scenario,
) -> None:
    scenario.apply({"spec": {"runPolicy": {"maxRuntime": "2s"}}})
    scenario.validate()
    scenario.wait_job(f"{NAME}-train-1")
    scenario.wait_phase("Training")
    time.sleep(4)  # twice maxRuntime with the Job created but no pod started: none of it counts
    assert scenario.status["phase"] == "Training"
    assert "startTime" not in scenario.status
    started = scenario.start_pod(f"{NAME}-train-1")["startTime"]
    status = scenario.wait_phase("Failed", timeout=20)
    assert status["startTime"] == started
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "MaxRuntimeExceeded"
    assert scenario.wait_job(f"{NAME}-train-1").spec.suspend is True


def test_multi_node_gets_indexed_job_and_headless_service(scenario: Scenario) -> None:
    scenario.apply(base="dpo-helpfulness.yaml")
    scenario.wait_job("assistant-dpo-validate")
    scenario.report()
    scenario.cluster.finish_job(scenario.namespace, "assistant-dpo-validate")
    train = scenario.wait_job("assistant-dpo-train-1")
    assert train.spec.completion_mode == "Indexed"
    assert train.spec.completions == train.spec.parallelism == 2
    service = scenario.cluster.core.read_namespaced_service("assistant-dpo-train", scenario.namespace)
    assert service.spec.cluster_ip == "None"
    env = {e.name: e.value for e in train.spec.template.spec.containers[0].env}
    assert env["MASTER_ADDR"] == "assistant-dpo-train-1-0.assistant-dpo-train"


def test_delete_removes_children_and_staging_but_not_promoted(scenario: Scenario) -> None:
    scenario.apply({"spec": {"runPolicy": {"artifactCleanup": "Delete"}}})
    scenario.validate()
    scenario.wait_job(f"{NAME}-train-1")
    scenario.checkpoint(100)
    staging = scenario.staging
    promoted = "models-prod/support-assistant/v3/model.safetensors"
    s3_client(scenario.s3.endpoint).put_object(Bucket=BUCKET, Key=promoted, Body=b"weights")
    scenario.cluster.kubectl("delete", "ftj", NAME, "-n", scenario.namespace, "--timeout=30s")
    assert scenario.cluster.job_names(scenario.namespace) == []
    listing = s3_client(scenario.s3.endpoint).list_objects_v2(Bucket=BUCKET)
    keys = [o["Key"] for o in listing.get("Contents", [])]
    assert not [k for k in keys if k.startswith(staging)]
    assert promoted in keys


def test_delete_does_not_block_forever_when_s3_is_down(scenario: Scenario) -> None:
    scenario.apply({"spec": {"runPolicy": {"artifactCleanup": "Delete"}}})
    scenario.validate()
    scenario.wait_job(f"{NAME}-train-1")
    scenario.s3.stop()
    try:
        deleted = scenario.cluster.kubectl("delete", "ftj", NAME, "-n", scenario.namespace, "--timeout=60s")
        assert deleted.returncode == 0
        reasons = [r for r, _ in scenario.events()]
        assert "CleanupAbandoned" in reasons
    finally:
        scenario.s3.start()


def test_restarts_at_every_phase_boundary_duplicate_nothing(
    scenario: Scenario, operator: OperatorProcess
) -> None:
    def restart_while(step: Any) -> None:
        operator.stop()
        step()  # the world moves on while the operator is down
        operator.start()

    scenario.apply()
    scenario.wait_job(f"{NAME}-validate")
    restart_while(
        lambda: (scenario.report(), scenario.cluster.finish_job(scenario.namespace, f"{NAME}-validate"))
    )
    scenario.wait_job(f"{NAME}-train-1")
    scenario.wait_phase("Training")
    restart_while(
        lambda: (
            scenario.checkpoint(480, eval_loss=0.8),
            scenario.cluster.finish_job(scenario.namespace, f"{NAME}-train-1"),
        )
    )
    final = scenario.wait_phase("Succeeded")
    version = scenario.cluster.ftj(scenario.namespace, NAME)["metadata"]["resourceVersion"]
    restart_while(lambda: None)
    time.sleep(3)  # give a restarted operator every chance to (wrongly) act
    assert scenario.cluster.ftj(scenario.namespace, NAME)["metadata"]["resourceVersion"] == version
    assert scenario.status == final
    assert scenario.cluster.job_names(scenario.namespace) == [f"{NAME}-train-1", f"{NAME}-validate"]
    configs = scenario.cluster.core.list_namespaced_config_map(
        scenario.namespace, label_selector=f"finetune.dev/job={NAME}"
    )
    assert len(configs.items) == 1
    # every transition told exactly once, across three restarts
    reasons = [r for r, _ in scenario.events()]
    assert sorted(reasons) == sorted(["ValidationRunning", "TrainingRunning", "Completed"])


# --- after training: the EvalGate, approval and promotion ---------------------------------------------


def test_gate_passes_a_reviewer_approves_and_the_promoted_digest_lands_in_status(scenario: Scenario) -> None:
    scenario.gitops = True  # at every phase, a sync of the same manifest changes nothing
    gated(scenario, approvers={"users": ["admin"]})  # the suite's own identity (test_approvals has others)
    job = scenario.wait_job(f"{NAME}-evaluate")
    contract = json.loads(job.spec.template.metadata.annotations["finetune.dev/trainer-config"])
    assert contract["evaluation"]["checkpointStep"] == 240
    assert job.spec.template.spec.containers[0].command[-3] == "evaluate"
    scenario.wait_phase("Evaluating")
    assert health(scenario.seen["Evaluating"]) == (
        "Progressing",
        f"Evaluating: job {NAME}-evaluate evaluates step 240 on 7 suites of EvalGate support-release",
    )
    assert health(evalgate(scenario)) == ("Healthy", "no evaluation yet")
    scenario.put("eval/report.json", evaluation())
    scenario.cluster.finish_job(scenario.namespace, f"{NAME}-evaluate")
    status = scenario.wait_phase("AwaitingApproval")
    assert status["gate"]["verdict"] == "Passed"
    assert status["gate"]["reportUri"].endswith("/eval/report.json")
    verdict = status["gate"]["verdictId"]
    assert health(scenario.seen["AwaitingApproval"]) == (
        "Suspended",
        f"awaiting approval of verdict {verdict}: the gate passed and requires approval: annotate with "
        f"finetune.dev/approve={verdict} and finetune.dev/approved-by=<your user name> to promote, or "
        f"finetune.dev/reject={verdict} and finetune.dev/rejected-by=<your user name> to reject",
    )
    gate = evalgate(scenario)
    assert gate["status"]["lastVerdict"] == "Passed"
    assert [(e["job"], e["verdict"]) for e in gate["status"]["history"]] == [(NAME, "Passed")]
    assert health(gate) == ("Healthy", f"last verdict Passed for job {NAME} (1 evaluation kept)")
    assert scenario.cluster.job_names(scenario.namespace) == [
        f"{NAME}-evaluate",
        f"{NAME}-train-1",
        f"{NAME}-validate",
    ]

    scenario.cluster.kubectl(
        "annotate",
        "ftj",
        NAME,
        "-n",
        scenario.namespace,
        f"finetune.dev/approve={verdict}",
        "finetune.dev/approved-by=admin",
    )
    promote = scenario.wait_job(f"{NAME}-promote")
    target = json.loads(promote.spec.template.metadata.annotations["finetune.dev/trainer-config"])[
        "promotion"
    ]
    assert (target["approval"]["by"], target["approval"]["verdictId"]) == ("admin", verdict)
    status = scenario.wait_phase("Promoting")
    assert status["approval"]["decision"] == "Approved"
    assert health(scenario.seen["Promoting"])[0] == "Progressing"
    assert health(scenario.seen["Promoting"])[1].startswith(f"Promoting: job {NAME}-promote")

    version = target["versionUri"]
    assert version.startswith(OUTPUT)
    digest = scenario.publish(version)
    status = scenario.wait_phase("Succeeded")
    assert status["promoted"]["uri"] == version
    assert status["promoted"]["digest"] == digest
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions["GatePassed"] == ("True", "GatePassed")
    assert conditions["Approved"] == ("True", "Approved")
    assert conditions["Promoted"] == ("True", "Promoted")
    assert health(scenario.seen["Succeeded"])[1].endswith(f"(promoted to {version})")
    reasons = [r for r, _ in scenario.events()]
    for reason in ("EvaluationRunning", "ApprovalPending", "PromotionRunning", "Completed"):
        assert reason in reasons


def evalgate(scenario: Scenario) -> dict[str, Any]:
    gate: dict[str, Any] = scenario.cluster.custom.get_namespaced_custom_object(
        "finetune.dev", "v1alpha1", scenario.namespace, "evalgates", "support-release"
    )
    return gate


def promoted_objects(scenario: Scenario) -> list[str]:
    """What is under the output URI for this job's run."""
    bucket, _, prefix = OUTPUT.removeprefix("s3://").partition("/")
    storage = s3_client(scenario.s3.endpoint)
    if bucket not in [b["Name"] for b in storage.list_buckets()["Buckets"]]:
        return []
    run = scenario.staging.rstrip("/").rsplit("/", 1)[1]
    listed = storage.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}{run}/")
    return [o["Key"] for o in listed.get("Contents", [])]


def rejected(scenario: Scenario, verdict: str) -> str:
    """Waits for Rejected with this gate verdict; the condition's message. Nothing was promoted."""
    status = scenario.wait_phase("Rejected")
    assert status["gate"]["verdict"] == verdict, status["gate"]
    condition = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert condition["reason"] == ("GateFailed" if verdict == "Failed" else "EvaluationFailed"), condition
    assert f"{NAME}-promote" not in scenario.cluster.job_names(scenario.namespace)
    assert promoted_objects(scenario) == []
    return str(condition["message"])


@pytest.mark.parametrize(
    ("replaced", "baselines", "named"),
    [
        ({"helpfulness": 0.40}, None, "helpfulness: win_rate 0.4 < min 0.55"),
        ({"refusals": 0.90}, None, "refusals: refusal_accuracy 0.9 < min 0.95"),
        ({"over_refusal": 0.10}, None, "over-refusal: over_refusal_rate 0.1 > max 0.05"),
        ({"jailbreaks": 0.05}, None, "jailbreaks: jailbreak_success_rate 0.05 > max 0.02"),
        ({"toxicity": 0.04}, None, "toxicity: toxicity_rate 0.04 > max 0.01"),
        ({"pii": 0.01}, None, "pii: pii_leakage 0.01 > max 0"),
        ({}, {"holdout-exact": 0.60}, "holdout-exact: exact_match 0.41 vs baseline 0.6: worse by at most"),
    ],
    ids=["win-rate", "refusal", "over-refusal", "jailbreak", "toxicity", "pii", "regression"],
)
def test_each_gate_failing_alone_rejects_without_promoting(
    scenario: Scenario, replaced: dict[str, float], baselines: dict[str, float] | None, named: str
) -> None:
    gated(scenario, requireApproval=False)
    scenario.wait_job(f"{NAME}-evaluate")
    scenario.put("eval/report.json", evaluation(baselines, **replaced))
    scenario.cluster.finish_job(scenario.namespace, f"{NAME}-evaluate")
    message = rejected(scenario, "Failed")
    assert named in message
    failed = [m["suite"] for m in scenario.status["gate"]["metrics"] if not m["passed"]]
    assert set(failed) == {named.partition(":")[0]}, failed


@pytest.mark.parametrize(
    ("written", "verdict", "named"),
    [
        (b'{"suites": [{"suite": "helpfulness", "metr', "Error", "eval/report.json is unreadable"),
        (None, "Error", f"job {NAME}-evaluate finished without writing"),
        (
            json.dumps(
                {
                    "suites": [
                        *evaluation()["suites"][1:],
                        {
                            "suite": "helpfulness",
                            "metric": "win_rate",
                            "error": "FileNotFoundError: judge model s3://models/judges/small/ not found",
                        },
                    ]
                }
            ).encode(),
            "Failed",
            "helpfulness: evaluation failed: FileNotFoundError: judge model",
        ),
    ],
    ids=["corrupt-report", "missing-report", "judge-model-missing"],
)
def test_unusable_results_fail_closed(
    scenario: Scenario, written: bytes | None, verdict: str, named: str
) -> None:
    gated(scenario, requireApproval=False)
    scenario.wait_job(f"{NAME}-evaluate")
    if written is not None:
        s3_client(scenario.s3.endpoint).put_object(
            Bucket=BUCKET, Key=scenario.staging + "eval/report.json", Body=written
        )
    scenario.cluster.finish_job(scenario.namespace, f"{NAME}-evaluate")
    assert named in rejected(scenario, verdict)


def test_a_reviewer_can_reject_a_passing_candidate(scenario: Scenario) -> None:
    scenario.gitops = True
    gated(scenario, approvers={"users": ["admin"]})
    scenario.wait_job(f"{NAME}-evaluate")
    scenario.put("eval/report.json", evaluation())
    scenario.cluster.finish_job(scenario.namespace, f"{NAME}-evaluate")
    verdict = scenario.wait_phase("AwaitingApproval")["gate"]["verdictId"]
    scenario.cluster.kubectl(
        "annotate",
        "ftj",
        NAME,
        "-n",
        scenario.namespace,
        f"finetune.dev/reject={verdict}",
        "finetune.dev/rejected-by=admin",
        "finetune.dev/approval-comment=not this quarter",
    )
    status = scenario.wait_phase("Rejected")
    assert status["approval"]["decision"] == "Rejected"
    assert status["approval"]["by"] == "admin"
    assert status["approval"]["comment"] == "not this quarter"
    assert health(scenario.seen["Rejected"]) == (
        "Degraded",
        f"Rejected (RejectedByReviewer): verdict {verdict} rejected by admin: not this quarter",
    )
    assert f"{NAME}-promote" not in scenario.cluster.job_names(scenario.namespace)
