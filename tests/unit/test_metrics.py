"""What the operator counts when a status write changes a job (`Metrics.record`), the gauges computed at
scrape time from the watched jobs (`JobTable`), and the trainer's MFU arithmetic (`flops`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from finetune_api.v1alpha1 import EvalGate, FineTuneJob, FineTuneJobStatus
from finetune_operator.metrics import JobRow, Metrics
from finetune_trainer import flops
from helpers.support import example, merge_patch

CREATED = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
NOW = CREATED + timedelta(hours=1)


def ftj(spec: dict[str, Any] | None = None, **status: Any) -> FineTuneJob:
    doc = merge_patch(example("sft-support-assistant.yaml"), {"spec": spec or {}})
    doc["metadata"] |= {"uid": "u", "generation": 1, "creationTimestamp": CREATED.isoformat()}
    doc["status"] = status
    return FineTuneJob.model_validate(doc)


def status(**fields: Any) -> FineTuneJobStatus:
    return FineTuneJobStatus.model_validate(fields)


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def condition(type_: str, state: str, reason: str) -> dict[str, Any]:
    return {"type": type_, "status": state, "reason": reason, "lastTransitionTime": NOW.isoformat()}


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def test_a_phase_change_counts_a_transition_and_times_the_phase_left(metrics: Metrics) -> None:
    since = NOW - timedelta(minutes=20)
    job = ftj(phase="Training", lastPhaseTransitionTime=since.isoformat())
    metrics.record(job, status(phase="Evaluating"), NOW)
    labels = {"namespace": "ml-platform", "method": "sft"}
    assert sample(metrics, "finetune_operator_job_phase_transitions_total", **labels,
                  from_phase="Training", to_phase="Evaluating") == 1  # fmt: skip
    assert sample(metrics, "finetune_operator_job_phase_duration_seconds_sum", method="sft",
                  phase="Training") == 1200  # fmt: skip
    assert sample(metrics, "finetune_operator_queue_wait_seconds_count", method="sft", queue="gpu") is None


def test_a_status_write_without_a_phase_change_counts_nothing(metrics: Metrics) -> None:
    job = ftj(phase="Training")
    metrics.record(job, status(phase="Training", progress={"step": 5}), NOW)
    counted = [
        sample.name
        for family in metrics.registry.collect()
        if family.name.startswith("finetune_operator_") and family.type in ("counter", "histogram")
        for sample in family.samples
        if sample.value and not sample.name.endswith("_created")
    ]
    assert counted == []


def test_the_first_phase_is_timed_from_creation_and_a_kueue_wait_is_a_queue_wait(metrics: Metrics) -> None:
    job = ftj({"resources": {"queueName": "gpu"}}, phase="Pending")  # no stamp: Pending since creation
    metrics.record(job, status(phase="Training"), NOW)
    assert sample(metrics, "finetune_operator_queue_wait_seconds_sum", method="sft", queue="gpu") == 3600
    assert sample(metrics, "finetune_operator_job_phase_duration_seconds_sum", method="sft",
                  phase="Pending") == 3600  # fmt: skip


@pytest.mark.parametrize(
    ("old_phase", "new", "reason", "promotion"),
    [
        ("ValidatingData", ("Failed", "DataGatesFailed"), "DataGatesFailed", None),
        ("Evaluating", ("Rejected", "GateFailed"), "GateFailed", None),
        ("AwaitingApproval", ("Rejected", "RejectedByReviewer"), "RejectedByReviewer", None),
        ("Promoting", ("Failed", "PromotionFailed"), "PromotionFailed", "failed"),
    ],
)
def test_an_unsuccessful_end_is_counted_by_its_reason(
    metrics: Metrics, old_phase: str, new: tuple[str, str], reason: str, promotion: str | None
) -> None:
    phase, why = new
    ended = status(phase=phase, conditions=[condition("Succeeded", "False", why)])
    metrics.record(ftj(phase=old_phase), ended, NOW)
    labels = {"namespace": "ml-platform", "method": "sft"}
    assert sample(metrics, "finetune_operator_job_failures_total", **labels, reason=reason) == 1
    failed = sample(metrics, "finetune_operator_promotions_total", **labels, result="failed")
    assert failed == (1 if promotion else None)


def test_a_verdict_is_counted_once_with_each_check(metrics: Metrics) -> None:
    job = ftj({"evalGateRef": {"name": "release"}}, phase="Evaluating")
    gate = {
        "verdict": "Failed",
        "verdictId": "v-1",
        "metrics": [
            {"suite": "refusals", "metric": "refusal_accuracy", "passed": True},
            {"suite": "toxicity", "metric": "toxicity_rate", "passed": False},
        ],
    }
    decided = status(phase="Rejected", gate=gate)
    metrics.record(job, decided, NOW)
    again = job.model_copy(update={"status": decided})
    metrics.record(again, decided, NOW)  # the same verdict written again (a restart): not counted
    ns = {"namespace": "ml-platform", "gate": "release"}
    assert sample(metrics, "finetune_operator_gate_verdicts_total", **ns, verdict="Failed") == 1
    assert sample(metrics, "finetune_operator_gate_checks_total", **ns, suite="toxicity",
                  metric="toxicity_rate", result="failed") == 1  # fmt: skip
    assert sample(metrics, "finetune_operator_gate_checks_total", **ns, suite="refusals",
                  metric="refusal_accuracy", result="passed") == 1  # fmt: skip


def test_a_published_version_counts_a_promotion(metrics: Metrics) -> None:
    promoted = {"uri": "s3://models/v1/", "digest": "sha256:" + "0" * 64}
    metrics.record(ftj(phase="Promoting"), status(phase="Succeeded", promoted=promoted), NOW)
    labels = {"namespace": "ml-platform", "method": "sft"}
    assert sample(metrics, "finetune_operator_promotions_total", **labels, result="succeeded") == 1


def body(phase: str | None, *, since: str | None = None, **extra: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase} if phase else {}
    if since:
        status["lastPhaseTransitionTime"] = since
    status |= extra
    return {
        "metadata": {"creationTimestamp": "2026-11-23T12:00:00Z"},
        "spec": {"method": "dpo"},
        "status": status,
    }


def test_the_job_table_counts_every_phase_and_times_only_unfinished_jobs(metrics: Metrics) -> None:
    queued = [condition("PodsScheduled", "False", "Queued")]
    table = metrics.table
    assert table.update("a", "new", JobRow.of(body(None))) is True
    assert table.update("a", "new", JobRow.of(body(None))) is False  # seen before
    table.update("a", "waiting", JobRow.of(body("Pending", since="2026-11-23T12:30:00Z", conditions=queued)))
    table.update("a", "done", JobRow.of(body("Succeeded")))
    table.update("b", "gone", JobRow.of(body("Training")))
    table.update("b", "gone", None)  # deleted
    jobs = {
        (s.labels["namespace"], s.labels["phase"]): s.value
        for family in table.collect()
        if family.name == "finetune_operator_jobs"
        for s in family.samples
    }
    assert jobs[("a", "Pending")] == 2
    assert jobs[("a", "Succeeded")] == 1
    assert jobs[("a", "Training")] == 0  # every phase, zeros included: a panel never has a gap
    assert ("b", "Training") not in jobs
    entered = {
        s.labels["finetunejob"]: (s.value, s.labels["reason"])
        for family in table.collect()
        if family.name == "finetune_operator_job_phase_entered_timestamp_seconds"
        for s in family.samples
    }
    created = datetime(2026, 11, 23, 12, 0, tzinfo=UTC).timestamp()
    assert entered == {"new": (created, ""), "waiting": (created + 1800, "Queued")}


# --- the trainer's MFU ------------------------------------------------------------------------------


class Config:
    num_hidden_layers = 2
    hidden_size = 64


def test_flops_per_token_counts_weight_gradients_only_for_what_trains() -> None:
    full = flops.flops_per_token(Config(), total=1_000_000, trainable=1_000_000, seq_len=128)
    assert full == 6 * 1_000_000 + 12 * 2 * 64 * 128  # PaLM's 6N + 12·L·d·T
    lora = flops.flops_per_token(Config(), total=1_000_000, trainable=10_000, seq_len=128)
    assert lora == 4 * 1_000_000 + 2 * 10_000 + 12 * 2 * 64 * 128


def test_mfu_against_a_known_peak_and_none_for_an_unknown_device() -> None:
    assert flops.peak_flops("NVIDIA H100 80GB HBM3", env={}) == 989e12
    assert flops.peak_flops("NVIDIA H100 PCIe", env={}) == 756e12
    assert flops.peak_flops("NVIDIA L4", env={}) == 121e12
    assert flops.peak_flops("Some New Accelerator", env={}) is None
    assert flops.peak_flops("Some New Accelerator", env={"FINETUNE_PEAK_FLOPS": "5e14"}) == 5e14
    # 8 GPUs at 989 TFLOP/s, 6 GFLOP per token at 600k tokens/s: 45.5%
    assert flops.mfu(6e9, 600_000, 989e12, 8) == pytest.approx(0.455, abs=0.001)


def test_a_new_jobs_series_exist_at_zero_before_their_first_event(metrics: Metrics) -> None:
    """Prometheus cannot see the first increment of a series born at 1 (`increase()` is 0): what a job
    can move is created at 0 when it is first seen, and its checks when its gate is read."""
    metrics.seen("team-a", "dpo", "release")
    labels = {"namespace": "team-a", "method": "dpo"}
    assert sample(metrics, "finetune_operator_job_failures_total", **labels, reason="DataGatesFailed") == 0
    assert sample(metrics, "finetune_operator_job_phase_transitions_total", **labels,
                  from_phase="Promoting", to_phase="Succeeded") == 0  # fmt: skip
    assert sample(metrics, "finetune_operator_promotions_total", **labels, result="failed") == 0
    gate = {"namespace": "team-a", "gate": "release"}
    assert sample(metrics, "finetune_operator_gate_verdicts_total", **gate, verdict="Error") == 0
    release = EvalGate.model_validate(merge_patch(example("evalgate-support-release.yaml"), {}))
    metrics.gate_read("team-a", release)
    checks = {
        (s.labels["suite"], s.labels["result"])
        for family in metrics.registry.collect()
        if family.name == "finetune_operator_gate_checks"
        for s in family.samples
        if s.name.endswith("_total") and s.value == 0
    }
    assert {(suite.name, "failed") for suite in release.spec.suites} <= checks


# --- the trainer's gauges ------------------------------------------------------------------------------


class NoStore:
    def write_bytes(self, uri: str, data: bytes) -> None:
        self.last = (uri, data)


def test_the_trainers_gauges_carry_the_run_and_time_a_run_from_its_start() -> None:
    """Before the first step a hung run already has a total and a start to stall from; a NaN loss is
    exported as NaN (the NaN alert compares the series with itself); on CPU there is no MFU."""
    import math  # noqa: PLC0415
    import time  # noqa: PLC0415
    from types import SimpleNamespace  # noqa: PLC0415

    from finetune_trainer.progress import Metrics as TrainerMetrics  # noqa: PLC0415
    from finetune_trainer.progress import ProgressReporter  # noqa: PLC0415

    run = {"namespace": "team-a", "finetunejob": "sft-a", "run_id": "sft-a-1", "method": "sft"}
    metrics = TrainerMetrics(run, CollectorRegistry())
    reporter = ProgressReporter(NoStore(), "s3://b/progress.json", metrics, seq_len=128)  # type: ignore[arg-type]
    state = SimpleNamespace(global_step=0, max_steps=90, num_input_tokens_seen=0, epoch=0.0,
                            is_world_process_zero=True)  # fmt: skip
    reporter.on_train_begin(SimpleNamespace(bf16=False, fp16=False), state, None, model=None)
    value = metrics.registry.get_sample_value
    assert value("finetune_trainer_total_steps", run) == 90
    assert value("finetune_trainer_step", run) == 0
    assert time.time() - value("finetune_trainer_last_step_timestamp_seconds", run) < 5
    reporter.on_log(None, state, None, logs={"loss": float("nan")})
    assert math.isnan(value("finetune_trainer_loss", run))
    assert value("finetune_trainer_mfu", run) is None
    assert value("finetune_trainer_accelerator_memory_total_bytes", run) is None


def test_the_expected_time_is_written_before_the_first_step_and_scaled_on_resume() -> None:
    from types import SimpleNamespace  # noqa: PLC0415

    from finetune_api.run_layout import ProgressReport  # noqa: PLC0415
    from finetune_trainer.progress import ProgressReporter  # noqa: PLC0415

    for done, left in ((0, 600.0), (30, 400.0)):  # a run resumed at step 30 of 90 has 2/3 left
        store = NoStore()
        reporter = ProgressReporter(store, "s3://b/progress.json", seq_len=128)  # type: ignore[arg-type]
        reporter.expected_seconds = 600.0
        state = SimpleNamespace(global_step=done, max_steps=90, num_input_tokens_seen=0, epoch=0.0,
                                is_world_process_zero=True)  # fmt: skip
        reporter.on_train_begin(SimpleNamespace(bf16=False, fp16=False), state, None, model=None)
        report = ProgressReport.model_validate_json(store.last[1])
        assert (report.step, report.total_steps, report.expected_seconds) == (done, 90, left)
        assert reporter.metrics.eta_seconds._value.get() == left


def test_a_forward_pass_is_a_third_of_full_training() -> None:
    """DPO's reference pass is counted at the forward's FLOPs (2N + 4LdT): a third of 6N + 12LdT."""
    forward = flops.forward_per_token(Config(), total=1_000_000, seq_len=128)
    full = flops.flops_per_token(Config(), total=1_000_000, trainable=1_000_000, seq_len=128)
    assert 3 * forward == pytest.approx(full)


def test_expected_time_from_the_documented_rate_per_device() -> None:
    # 1e9 FLOPs a token, 80,000 tokens on 2 CPU threads at 40 GFLOP/s each: 1,000 s
    seconds, how = flops.expected_time(80_000, 1e9, gpu_name=None, devices=1, threads=2, qlora=False) or (
        0,
        "",
    )
    assert seconds == pytest.approx(1_000)
    assert how == "2 CPU threads x 40 GFLOP/s"
    # 8 H100s at 25% of 989 TFLOP/s; QLoRA at 20%
    h100 = flops.expected_time(
        10**9, 6e9, gpu_name="NVIDIA H100 80GB HBM3", devices=8, threads=1, qlora=False
    )
    assert h100 is not None
    assert h100[0] == pytest.approx(6e18 / (8 * 0.25 * 989e12))
    qlora = flops.expected_time(
        10**9, 6e9, gpu_name="NVIDIA H100 80GB HBM3", devices=8, threads=1, qlora=True
    )
    assert qlora is not None
    assert qlora[0] == pytest.approx(h100[0] * 0.25 / 0.2)
    assert (
        flops.expected_time(1, 1.0, gpu_name="Some New Accelerator", devices=1, threads=1, qlora=False)
        is None
    )
