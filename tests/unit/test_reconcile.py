"""reconcile(): every phase and failure of the lifecycle, from observations to decisions."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from finetune_api.base import TokenLengths
from finetune_api.run_layout import CheckpointMarker, DataValidationReport, ProgressReport
from finetune_api.v1alpha1 import FineTuneJob
from finetune_operator.observed import Reference
from finetune_operator.reconcile import (
    Decision,
    JobObservation,
    Observed,
    PodObservation,
    StorageObservation,
    reconcile,
)
from finetune_operator.reconcile.references import named
from finetune_operator.reconcile.status import remaining
from finetune_operator.settings import Settings
from helpers.support import example, merge_patch

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SETTINGS = Settings(trainer_image="registry.example/trainer:1")
PASSED = DataValidationReport(passed=True, rows={"training": 1000, "validation": 100}, duplicate_rate=0.004)


def ftj(
    base: str = "sft-support-assistant.yaml", patch: dict[str, Any] | None = None, **status: Any
) -> FineTuneJob:
    doc = merge_patch(example(base), patch or {})
    doc["metadata"] |= {"uid": "0a1b2c3d-1111-2222-3333-444455556666", "generation": 1}
    doc["spec"].pop("evalGateRef", None)
    doc["spec"].pop("outputUri", None)
    doc["spec"].pop("deployment", None)
    doc["status"] = status
    return FineTuneJob.model_validate(doc)


def observe(job: FineTuneJob, **kwargs: Any) -> Observed:
    return Observed(job=job, now=kwargs.pop("now", NOW), **kwargs)


def created(decision: Decision, kind: str) -> list[dict[str, Any]]:
    return [m for m in decision.create if m["kind"] == kind]


def conditions(decision: Decision) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in decision.status.conditions}


def then(decision: Decision) -> FineTuneJob:
    """The job as the next reconcile sees it: same spec, the status just decided."""
    return FineTuneJob.model_validate(
        {
            "metadata": {
                "name": "support-assistant-sft",
                "namespace": "ml-platform",
                "uid": "0a1b2c3d-x",
                "generation": 1,
            },
            "spec": ftj().spec.dump(),
            "status": decision.status.dump(),
        }
    )


def validated(job: FineTuneJob) -> FineTuneJob:
    decision = reconcile(
        observe(
            job,
            validation=JobObservation("x-validate", outcome="Complete"),
            storage=StorageObservation(PASSED),
        ),
        SETTINGS,
    )
    return job.model_copy(update={"status": decision.status})


# --- validation -----------------------------------------------------------------------------------


def test_new_job_creates_only_a_cpu_only_validation_job_carrying_its_contract() -> None:
    decision = reconcile(observe(ftj()), SETTINGS)
    assert [(m["kind"], m["metadata"]["name"]) for m in decision.create] == [
        ("Job", "support-assistant-sft-validate")
    ]
    assert decision.status.phase == "ValidatingData"
    assert conditions(decision)["DataValidated"] == ("Unknown", "ValidationRunning")
    template = decision.create[0]["spec"]["template"]
    contract = json.loads(template["metadata"]["annotations"]["finetune.dev/trainer-config"])
    assert "hyperparameters" not in contract
    assert contract["training"]["uri"] == "s3://datasets/support/2026-11/train.jsonl"
    volume = next(v for v in template["spec"]["volumes"] if v["name"] == "config")
    assert volume["downwardAPI"]["items"][0]["path"] == "trainer.json"
    container = template["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert container["command"][-3:] == ["validate-data", "--config", "/etc/finetune/trainer.json"]
    assert [e.reason for e in decision.events] == ["ValidationRunning"]
    assert decision.requeue_after == SETTINGS.resync_seconds  # the Job's watch events wake it


def test_running_validation_asks_for_nothing_new() -> None:
    job = ftj(phase="ValidatingData")
    decision = reconcile(observe(job, validation=JobObservation("v", active=1)), SETTINGS)
    assert decision.create == decision.apply == []
    assert decision.events == []


@pytest.mark.parametrize(
    ("outcome", "report", "storage_error", "phase", "reason", "text"),
    [
        (
            "Failed",
            DataValidationReport(
                passed=False, rows={"training": 50}, failed_rules=["duplicate rate 4.1% > 2.0%"]
            ),
            None,
            "Failed",
            "DataGatesFailed",
            "data gates failed: duplicate rate 4.1% > 2.0%",
        ),
        ("Failed", None, None, "Failed", "DataUnreadable", "see kubectl logs job/v"),
        ("Complete", None, None, "Failed", "DataUnreadable", "validation succeeded without writing"),
        ("Complete", None, "connection refused", "ValidatingData", None, None),
    ],
    ids=["gates-failed", "crashed-without-report", "no-report", "s3-down-waits"],
)
def test_validation_outcomes(outcome, report, storage_error, phase, reason, text) -> None:
    job = ftj(phase="ValidatingData")
    observed = observe(
        job,
        validation=JobObservation("v", outcome=outcome, message="exit code 1"),
        storage=StorageObservation(data_report=report, error=storage_error),
    )
    decision = reconcile(observed, SETTINGS)
    assert decision.status.phase == phase
    if reason:
        assert conditions(decision)["Failed"] == ("True", reason)
        failed = next(c for c in decision.status.conditions if c.type == "Failed")
        assert text in failed.message
        assert decision.events[-1].type == "Warning"
        assert decision.create == []
    else:
        assert "Failed" not in conditions(decision)
        assert decision.requeue_after


def test_failed_gate_keeps_the_report_in_status() -> None:
    report = DataValidationReport(
        passed=False,
        rows={"training": 50},
        duplicate_rate=0.041,
        pii_findings={"email": 3},
        failed_rules=["x"],
    )
    decision = reconcile(
        observe(ftj(), validation=JobObservation("v", outcome="Failed"), storage=StorageObservation(report)),
        SETTINGS,
    )
    assert decision.status.data_report.duplicate_rate == 0.041
    assert decision.status.data_report.pii_findings == {"email": 3}
    assert decision.status.data_report.report_uri.endswith("/data-report.json")


# --- training -------------------------------------------------------------------------------------


def test_passing_validation_resolves_auto_and_starts_attempt_one() -> None:
    decision = reconcile(
        observe(
            ftj(), validation=JobObservation("v", outcome="Complete"), storage=StorageObservation(PASSED)
        ),
        SETTINGS,
    )
    assert decision.status.phase == "Pending"  # the example names a Kueue queue: admission comes first
    assert conditions(decision)["PodsScheduled"] == ("False", "Queued")
    assert decision.status.attempts == 1
    assert decision.status.start_time is None  # no pod has started: maxRuntime does not count yet
    assert conditions(decision)["DataValidated"] == ("True", "DataGatesPassed")
    contract = json.loads(created(decision, "ConfigMap")[0]["data"]["trainer.json"])
    assert contract["hyperparameters"]["epochs"] == 3  # 1,000 rows: the documented auto rule
    train = created(decision, "Job")[0]
    assert train["metadata"]["name"] == "support-assistant-sft-train-1"
    assert train["spec"]["suspend"] is True  # the example names a Kueue queue
    assert train["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "ml-training"
    assert [e.reason for e in decision.events] == ["TrainingRunning"]  # one event per phase transition
    assert decision.events[0].message.startswith("data gates passed (1000 training rows")


def test_auto_is_resolved_for_the_pods_device_and_attempt_one_names_the_steps() -> None:
    measured = PASSED.model_copy(update={"tokens": TokenLengths(mean=92, max=101)})
    job = ftj()
    decision = reconcile(
        observe(
            job, validation=JobObservation("v", outcome="Complete"), storage=StorageObservation(measured)
        ),
        SETTINGS,
    )
    assert decision.status.data_report.tokens == TokenLengths(mean=92, max=101)
    contract = json.loads(created(decision, "ConfigMap")[0]["data"]["trainer.json"])
    hp = contract["hyperparameters"]
    # 1,000 packed rows of ~92 tokens: 45 windows of 2,048; an H100 holds 2, 100 steps want a batch of 1
    assert (hp["batchSize"], hp["gradientAccumulationSteps"]) == (1, 1)
    message = {c.type: c.message for c in decision.status.conditions}["Trained"]
    assert message == (
        "attempt 1 started: job support-assistant-sft-train-1; 135 optimizer steps of 1 sequence: 1 per "
        "device x 1 accumulation x 1 GPU (NVIDIA-H100-80GB-HBM3, 80 GiB each) expected"
    )
    # the next reconcile reads the lengths back from status: the same contract, nothing to apply
    again = training(
        job.model_copy(update={"status": decision.status}),
        JobObservation("support-assistant-sft-train-1", attempt=1, suspended=True),
        config_data=created(decision, "ConfigMap")[0]["data"]["trainer.json"],
    )
    assert again.create == again.apply == []


def test_training_pod_spec() -> None:
    job = validated(ftj(patch={"spec": {"runPolicy": {"maxRuntime": "6h"}}}))
    decision = reconcile(observe(job, validation=JobObservation("v", outcome="Complete")), SETTINGS)
    train = created(decision, "Job")[0]
    pod = train["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"] == {
        "requests": {"cpu": "8", "memory": "48Gi", "nvidia.com/gpu": 1},
        "limits": {"memory": "48Gi", "nvidia.com/gpu": 1},
    }
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {m["mountPath"] for m in container["volumeMounts"]} == {
        "/etc/finetune",
        "/scratch",
        "/tmp",
        "/dev/shm",
    }
    secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert secret_env == {
        "AWS_ACCESS_KEY_ID": {"name": "finetune-s3", "key": "AWS_ACCESS_KEY_ID"},
        "AWS_SECRET_ACCESS_KEY": {"name": "finetune-s3", "key": "AWS_SECRET_ACCESS_KEY"},
    }
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["priorityClassName"] == "ml-training"
    assert pod["serviceAccountName"] == "finetune-trainer"
    # no pod has started, so maxRuntime has not begun: the Job's own deadline (which counts from the Job
    # controller's start, before pods are scheduled) would end it early; the operator enforces it instead
    assert "activeDeadlineSeconds" not in train["spec"]
    assert train["metadata"]["ownerReferences"][0]["kind"] == "FineTuneJob"
    assert "finetune-s3" not in created(decision, "ConfigMap")[0]["data"]["trainer.json"]


@pytest.mark.parametrize(
    ("named", "default", "expected"),
    [
        ("finetune-trainer", "chart-trainer", "finetune-trainer"),
        (None, "chart-trainer", "chart-trainer"),
        (None, "", None),  # neither: the namespace's default ServiceAccount
    ],
)
def test_trainer_pods_run_as_the_jobs_service_account_else_the_operators_default(
    named: str | None, default: str, expected: str | None
) -> None:
    job = validated(ftj(patch={"spec": {"serviceAccountName": named}}))
    settings = Settings(trainer_image="registry.example/trainer:1", trainer_service_account=default)
    decision = reconcile(observe(job, validation=JobObservation("v", outcome="Complete")), settings)
    assert created(decision, "Job")[0]["spec"]["template"]["spec"].get("serviceAccountName") == expected


def test_multi_node_is_an_indexed_job_with_headless_service_and_rendezvous_env() -> None:
    job = validated(ftj("dpo-helpfulness.yaml"))
    decision = reconcile(observe(job, validation=JobObservation("v", outcome="Complete")), SETTINGS)
    (service,), (train,) = created(decision, "Service"), created(decision, "Job")
    assert service["spec"]["clusterIP"] == "None"
    assert train["spec"]["completionMode"] == "Indexed"
    assert train["spec"]["completions"] == train["spec"]["parallelism"] == 2
    pod = train["spec"]["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] == "assistant-dpo-train"
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["containers"][0]["env"]}
    assert env["MASTER_ADDR"] == "assistant-dpo-train-1-0.assistant-dpo-train"
    assert env["WORLD_SIZE"] == "16"
    assert env["NODE_RANK"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
    }
    assert pod["containers"][0]["command"][0] == "torchrun"
    assert all(k in service["spec"]["selector"].items() for k in [("finetune.dev/job", "assistant-dpo")])


def training(job: FineTuneJob, *jobs: JobObservation, **kwargs: Any) -> Decision:
    return reconcile(
        observe(job, validation=JobObservation("v", outcome="Complete"), training=jobs, **kwargs), SETTINGS
    )


def test_progress_reaches_status_with_eta() -> None:
    job = validated(ftj())
    job.status.start_time = NOW - timedelta(minutes=10)
    report = ProgressReport(step=120, total_steps=480, loss=1.25, updated_at=NOW)
    decision = training(
        job, JobObservation("j", attempt=1, active=1), storage=StorageObservation(progress=report)
    )
    progress = decision.status.progress
    assert (progress.summary, progress.percent, progress.loss) == ("120/480 (25%)", 25, 1.25)
    assert progress.eta == NOW + timedelta(minutes=30)
    assert progress.remaining == "30m"
    assert decision.requeue_after <= 30


def test_before_the_first_step_the_eta_is_the_trainers_estimate() -> None:
    job = validated(ftj())
    job.status.start_time = NOW - timedelta(minutes=1)
    report = ProgressReport(step=0, total_steps=135, expected_seconds=720.0, updated_at=NOW)
    decision = training(
        job, JobObservation("j", attempt=1, active=1), storage=StorageObservation(progress=report)
    )
    progress = decision.status.progress
    assert (progress.summary, progress.remaining, progress.eta) == (
        "0/135 (0%)",
        "12m",
        NOW + timedelta(minutes=12),
    )


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "<1m"),
        (59, "<1m"),
        (60, "1m"),
        (719, "11m"),
        (3599, "59m"),
        (3900, "1h05m"),
        (86399, "23h59m"),
        (86400, "1d00h"),
        (3 * 86400 + 7200 + 59, "3d02h"),
    ],
)
def test_remaining_time_reads_like_kubectl_ages(seconds: int, shown: str) -> None:
    assert remaining(timedelta(seconds=seconds)) == shown


@pytest.mark.parametrize(
    ("pod", "reason", "text"),
    [
        (
            PodObservation(
                "p", "j", "Pending", unschedulable_message="0/3 nodes: Insufficient nvidia.com/gpu"
            ),
            "Unschedulable",
            "Insufficient nvidia.com/gpu",
        ),
        (
            PodObservation(
                "p", "j", "Pending", waiting_reason="ImagePullBackOff", waiting_message="not found"
            ),
            "ImagePullBackOff",
            "ImagePullBackOff: not found",
        ),
        (
            PodObservation(
                "p",
                "j",
                "Pending",
                waiting_reason="CreateContainerConfigError",
                waiting_message='secret "finetune-s3" not found',
            ),
            "InvalidSpec",
            "finetune-s3",
        ),
        (PodObservation("p", "j", "Running"), "Scheduled", "run"),
    ],
    ids=["unschedulable", "image-pull", "missing-secret", "running"],
)
def test_pending_pod_reasons_surface_as_a_condition(pod: PodObservation, reason: str, text: str) -> None:
    job = validated(ftj(patch={"spec": {"resources": {"queueName": None}}}))
    decision = training(job, JobObservation("j", attempt=1, active=1), pods=(pod,))
    found = next(c for c in decision.status.conditions if c.type == "PodsScheduled")
    assert found.reason == reason
    assert text in found.message


def test_failed_attempt_is_retried_resuming_from_the_latest_checkpoint() -> None:
    job = validated(ftj())
    markers = (CheckpointMarker(step=200), CheckpointMarker(step=400))
    decision = training(
        job,
        JobObservation("j1", attempt=1, outcome="Failed", message="OOMKilled"),
        storage=StorageObservation(checkpoints=markers),
    )
    assert [m["metadata"]["name"] for m in created(decision, "Job")] == ["support-assistant-sft-train-2"]
    assert decision.status.attempts == 2
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "Retrying"), ("Normal", "Retrying")]
    assert "resumes from step 400" in decision.events[-1].message


def test_retry_limit_ends_failed() -> None:
    job = validated(ftj(patch={"spec": {"runPolicy": {"retryLimit": 1}}}))
    decision = training(
        job,
        JobObservation("j1", attempt=1, outcome="Failed"),
        JobObservation("j2", attempt=2, outcome="Failed", message="NCCL timeout"),
    )
    assert decision.status.phase == "Failed"
    assert decision.status.attempts == 2
    assert conditions(decision)["Failed"] == ("True", "RetryLimitExceeded")
    assert created(decision, "Job") == []


def test_max_runtime_stops_the_pods_and_fails() -> None:
    job = validated(ftj(patch={"spec": {"runPolicy": {"maxRuntime": "1h"}}}))
    job.status.start_time = NOW - timedelta(hours=1, seconds=1)
    decision = training(job, JobObservation("support-assistant-sft-train-1", attempt=1, active=1))
    assert conditions(decision)["Failed"] == ("True", "MaxRuntimeExceeded")
    assert decision.apply[-1]["spec"] == {"suspend": True}
    deadline = training(job, JobObservation("j", attempt=1, outcome="Failed", reason="DeadlineExceeded"))
    assert conditions(deadline)["Failed"] == ("True", "MaxRuntimeExceeded")


def test_max_runtime_counts_from_the_first_pod_start_and_the_start_is_kept() -> None:
    """Two hours queued in Kueue count for nothing; the clock starts with the first training pod (its
    `status.startTime`), is recorded in status, and survives the pods (an operator restart, a new
    attempt)."""
    job = validated(ftj(patch={"spec": {"runPolicy": {"maxRuntime": "1h"}}}))
    name = "support-assistant-sft-train-1"
    created_long_ago = JobObservation(name, attempt=1, suspended=True, start_time=NOW - timedelta(hours=2))
    queued = training(job, created_long_ago)
    assert queued.status.phase == "Pending"
    assert queued.status.start_time is None
    assert "Failed" not in conditions(queued)

    admitted = JobObservation(name, attempt=1, active=1, start_time=NOW - timedelta(minutes=50))
    pending_pod = PodObservation(f"{name}-x", name, "Pending")
    assert training(job, admitted, pods=(pending_pod,)).status.start_time is None

    started = NOW - timedelta(minutes=40)
    pods = (
        PodObservation(f"{name}-b", name, "Running", start_time=started + timedelta(minutes=1)),
        PodObservation(f"{name}-a", name, "Running", start_time=started),
        PodObservation("other-pod", "someone-else", "Running", start_time=NOW - timedelta(hours=5)),
    )
    running = training(job, admitted, pods=pods)
    assert running.status.start_time == started
    assert "Failed" not in conditions(running)

    recorded = job.model_copy(update={"status": running.status})
    later = NOW + timedelta(minutes=21)  # 61 minutes after the first pod started; its pods are gone
    over = training(recorded, JobObservation(name, attempt=1, active=1, start_time=NOW), now=later)
    assert over.status.start_time == started
    assert conditions(over)["Failed"] == ("True", "MaxRuntimeExceeded")


def test_when_to_look_again() -> None:
    """Progress is polled while training; a job waiting on Kueue is woken by its Job's events, but never
    later than its max-runtime deadline."""
    job = validated(ftj(patch={"spec": {"resources": {"queueName": None}}}))
    running = training(job, JobObservation("j", attempt=1, active=1))
    assert running.requeue_after == SETTINGS.reconcile_interval_seconds
    queued = validated(ftj(patch={"spec": {"runPolicy": {"maxRuntime": "1h"}}}))
    queued.status.start_time = NOW - timedelta(minutes=59)
    decision = training(queued, JobObservation("j", attempt=1, suspended=True))
    assert decision.status.phase == "Pending"
    assert decision.requeue_after == 60
    queued.status.start_time = NOW
    assert training(queued, JobObservation("j", attempt=1, suspended=True)).requeue_after == (
        SETTINGS.resync_seconds
    )


def test_suspend_and_resume() -> None:
    running = validated(ftj(patch={"spec": {"resources": {"queueName": None}}}))
    job = running.model_copy(update={"spec": running.spec.model_copy(update={"suspend": True})})
    markers = StorageObservation(checkpoints=(CheckpointMarker(step=300),))
    decision = training(
        job, JobObservation("support-assistant-sft-train-1", attempt=1, active=1), storage=markers
    )
    assert decision.status.phase == "Suspended"
    assert decision.apply[-1] == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "support-assistant-sft-train-1"},
        "spec": {"suspend": True},
    }
    assert "unsuspend to resume training from step 300" in decision.events[0].message

    resumed = job.model_copy(
        update={"status": decision.status, "spec": job.spec.model_copy(update={"suspend": False})}
    )
    again = training(
        resumed, JobObservation("support-assistant-sft-train-1", attempt=1, suspended=True), storage=markers
    )
    assert again.status.phase == "Training"
    assert again.apply[-1]["spec"] == {"suspend": False}
    assert conditions(again)["Suspended"] == ("False", "Resumed")


def test_completion_records_checkpoints_and_best_and_succeeds() -> None:
    job = validated(ftj())
    markers = tuple(
        CheckpointMarker(step=s, metrics={"eval_loss": loss})
        for s, loss in [(100, 1.2), (200, 0.9), (300, 1.0)]
    )
    decision = training(
        job,
        JobObservation("j", attempt=1, outcome="Complete"),
        storage=StorageObservation(checkpoints=markers),
    )
    assert decision.status.phase == "Succeeded"
    assert [c.step for c in decision.status.checkpoints] == [100, 200, 300]
    assert decision.status.best_checkpoint.step == 200
    assert decision.status.best_checkpoint.uri.endswith("/checkpoints/step-000000200/")
    assert conditions(decision)["Succeeded"] == ("True", "Completed")
    assert decision.status.completion_time == NOW


def test_completion_without_checkpoint_fails_and_waits_for_s3() -> None:
    job = validated(ftj())
    down = training(
        job, JobObservation("j", attempt=1, outcome="Complete"), storage=StorageObservation(error="timeout")
    )
    assert down.status.phase not in ("Succeeded", "Failed")
    assert down.status.checkpoints == []
    assert down.requeue_after
    empty = training(job, JobObservation("j", attempt=1, outcome="Complete"))
    assert conditions(empty)["Failed"] == ("True", "TrainingFailed")


def test_terminal_jobs_are_left_alone() -> None:
    job = ftj(phase="Succeeded")
    decision = reconcile(observe(job), SETTINGS)
    assert decision.create == decision.apply == decision.events == []
    assert decision.requeue_after is None


def test_invalid_spec_fails_with_the_message() -> None:
    decision = reconcile(observe(ftj(), spec_error="spec.dpo: dpo settings require method dpo"), SETTINGS)
    assert conditions(decision)["Failed"] == ("True", "InvalidSpec")
    assert decision.create == []


def test_a_second_reconcile_of_the_same_world_asks_for_nothing() -> None:
    """Idempotence: after the decision is carried out, reconciling again creates nothing new."""
    job = validated(ftj())
    first = training(job)
    after = job.model_copy(update={"status": first.status})
    job_name = created(first, "Job")[0]["metadata"]["name"]
    contract = created(first, "ConfigMap")[0]["data"]["trainer.json"]
    second = reconcile(
        observe(
            after,
            validation=JobObservation("v", outcome="Complete"),
            training=(JobObservation(job_name, attempt=1, suspended=True),),
            config_data=contract,
        ),
        SETTINGS,
    )
    assert second.create == []
    assert second.apply == []
    assert second.events == []


def test_a_phase_change_is_stamped_and_a_stay_keeps_the_stamp() -> None:
    """`lastPhaseTransitionTime` times a wait (the "stuck" alerts read it): set when the phase changes,
    kept while it does not."""
    first = reconcile(observe(ftj()), SETTINGS)
    assert first.status.phase == "ValidatingData"
    assert first.status.last_phase_transition_time == NOW
    later = NOW + timedelta(minutes=7)
    job = ftj(phase="ValidatingData", lastPhaseTransitionTime=NOW.isoformat())
    stayed = reconcile(observe(job, validation=JobObservation("v", active=1), now=later), SETTINGS)
    assert stayed.status.last_phase_transition_time == NOW
    moved = reconcile(
        observe(
            job,
            validation=JobObservation("x-validate", outcome="Complete"),
            storage=StorageObservation(PASSED),
            now=later,
        ),
        SETTINGS,
    )
    assert moved.status.phase == "Pending"  # the example waits in a Kueue queue
    assert moved.status.last_phase_transition_time == later


# --- named objects --------------------------------------------------------------------------------


def test_the_secret_and_service_account_the_spec_names_are_what_is_looked_up() -> None:
    job = ftj()
    assert named(job, SETTINGS) == (
        Reference("Secret", "finetune-s3", "spec.storage.credentialsSecretRef.name"),
        Reference("ServiceAccount", "finetune-trainer", "spec.serviceAccountName"),
    )
    bare = ftj(patch={"spec": {"serviceAccountName": None, "storage": {"credentialsSecretRef": None}}})
    assert named(bare, SETTINGS) == ()
    default = Settings(trainer_service_account="trainers")
    assert [(r.kind, r.name) for r in named(bare, default)] == [("ServiceAccount", "trainers")]


@pytest.mark.parametrize(
    ("missing", "reason"),
    [("Secret", "SecretNotFound"), ("ServiceAccount", "ServiceAccountNotFound")],
)
def test_a_missing_named_object_holds_the_job_then_it_goes_on(missing: str, reason: str) -> None:
    job = ftj()
    refs = named(job, SETTINGS)
    absent = tuple(replace(r, found=r.kind != missing) for r in refs)
    held = reconcile(observe(job, references=absent), SETTINGS)
    assert held.create == []
    assert held.status.phase == "Pending"
    assert conditions(held)["ReferencesResolved"] == ("False", reason)
    message = next(c.message for c in held.status.conditions if c.type == "ReferencesResolved")
    name = next(r.name for r in refs if r.kind == missing)
    assert f"{missing} {name} (" in message
    assert "not found in namespace ml-platform" in message
    assert [(e.type, e.reason) for e in held.events] == [("Warning", reason)]
    assert held.requeue_after == SETTINGS.reconcile_interval_seconds  # looked up again, not watched

    still = reconcile(observe(job.model_copy(update={"status": held.status}), references=absent), SETTINGS)
    assert (still.create, still.events) == ([], [])  # told once

    appeared = reconcile(observe(job.model_copy(update={"status": held.status}), references=refs), SETTINGS)
    assert [m["metadata"]["name"] for m in created(appeared, "Job")] == ["support-assistant-sft-validate"]
    assert conditions(appeared)["ReferencesResolved"] == ("True", "ReferencesResolved")


def test_a_named_object_deleted_while_a_job_runs_is_told_but_the_job_is_left_to_run() -> None:
    job = ftj(phase="ValidatingData")
    absent = tuple(replace(r, found=False) for r in named(job, SETTINGS))
    decision = reconcile(observe(job, validation=JobObservation("v", active=1), references=absent), SETTINGS)
    assert decision.status.phase == "ValidatingData"
    assert conditions(decision)["ReferencesResolved"] == ("False", "SecretNotFound")


def test_a_run_that_stopped_early_says_so_in_kubectl_get_and_its_trained_condition() -> None:
    job = validated(ftj())
    job.status.start_time = NOW - timedelta(minutes=10)
    running = training(
        job,
        JobObservation("j", attempt=1, active=1),
        storage=StorageObservation(progress=ProgressReport(step=40, total_steps=100, updated_at=NOW)),
    )
    why = "stopped early at step 50 of 100: held-out loss did not improve by 0.01 in 2 evaluations"
    markers = (
        CheckpointMarker(step=40, metrics={"eval_loss": 0.3}),
        CheckpointMarker(step=50, stopped_early=why),
    )
    decision = training(
        job.model_copy(update={"status": running.status}),
        JobObservation("j", attempt=1, outcome="Complete"),
        storage=StorageObservation(checkpoints=markers),
    )
    assert decision.status.phase == "Succeeded"
    assert decision.status.progress.summary == "50/100 (stopped early)"
    assert decision.status.progress.stopped_early == why
    trained = next(c for c in decision.status.conditions if c.type == "Trained")
    assert trained.message.startswith(why)
