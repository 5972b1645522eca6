"""Raw Jobs, Pods, Secrets and FineTuneJobs as the API server returns them, into what reconcile reads."""

from __future__ import annotations

import base64
import json
from typing import Any

from finetune_api.v1alpha1 import FineTuneJob
from finetune_operator.handlers import parse
from finetune_operator.observed import JobOutcome
from helpers.kube import finished_job_status
from helpers.support import example


def job_body(status: dict[str, Any], **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "ft-train-2", "labels": labels},
        "spec": {"suspend": False},
        "status": status,
    }


def test_a_running_job_has_no_outcome_and_counts_its_attempt() -> None:
    seen = parse.job_observation(
        job_body({"active": 2, "startTime": "2026-11-23T12:00:00Z"}, **{"finetune.dev/attempt": "2"})
    )
    assert (seen.name, seen.attempt, seen.active, seen.outcome, seen.suspended) == (
        "ft-train-2",
        2,
        2,
        None,
        False,
    )
    assert seen.start_time is not None
    assert seen.start_time.isoformat() == "2026-11-23T12:00:00+00:00"


def test_finished_jobs_carry_their_outcome_reason_and_message() -> None:
    done = parse.job_observation(job_body(finished_job_status()))
    assert done.outcome is JobOutcome.COMPLETE
    failed = parse.job_observation(
        job_body(finished_job_status(failed=True, reason="DeadlineExceeded", message="too slow"))
    )
    assert (failed.outcome, failed.reason, failed.message) == (
        JobOutcome.FAILED,
        "DeadlineExceeded",
        "too slow",
    )


def test_a_job_without_status_or_with_a_bad_attempt_label_is_still_observed() -> None:
    seen = parse.job_observation({"metadata": {"name": "x", "labels": {"finetune.dev/attempt": "two"}}})
    assert (seen.name, seen.attempt, seen.outcome, seen.start_time) == ("x", None, None, None)


def test_pods_say_why_they_wait_or_cannot_be_scheduled() -> None:
    pulling = parse.pod_observation(
        {
            "metadata": {"name": "p", "labels": {"job-name": "ft-train-1"}},
            "status": {
                "phase": "Pending",
                "containerStatuses": [
                    {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}
                ],
            },
        }
    )
    assert (pulling.job_name, pulling.waiting_reason, pulling.waiting_message) == (
        "ft-train-1",
        "ImagePullBackOff",
        "no such image",
    )
    stuck = parse.pod_observation(
        {
            "metadata": {"name": "q"},
            "status": {
                "phase": "Pending",
                "conditions": [
                    {"type": "PodScheduled", "status": "False", "message": "0/3 nodes have nvidia.com/gpu"}
                ],
            },
        }
    )
    assert stuck.unschedulable_message == "0/3 nodes have nvidia.com/gpu"
    assert parse.pod_observation({"metadata": {"name": "r"}}).phase == "Pending"


def test_secret_values_are_decoded_and_missing_or_garbled_keys_are_none() -> None:
    data = {"AWS_ACCESS_KEY_ID": base64.b64encode(b"AKIA123").decode(), "BAD": "\xff not base64 !"}
    assert parse.secret_value(data, "AWS_ACCESS_KEY_ID") == "AKIA123"
    assert parse.secret_value(data, "AWS_SECRET_ACCESS_KEY") is None
    assert parse.secret_value(data, "BAD") is None


def test_the_essence_drops_what_reconcile_never_reads_and_loads_back() -> None:
    body = example("sft-support-assistant.yaml")
    body["metadata"] |= {
        "uid": "u-1",
        "generation": 3,
        "managedFields": [{"manager": "kubectl"}],
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}", "team": "ml"},
    }
    body["status"] = {"phase": "Training"}
    essence = parse.essence(body)
    kept = json.loads(essence)
    assert "managedFields" not in kept["metadata"]
    assert kept["metadata"]["annotations"] == {"team": "ml"}
    job, problem = parse.load(essence)
    assert problem is None
    assert isinstance(job, FineTuneJob)
    assert job.metadata.generation == 3
    assert job.status.phase == "Training"
    assert parse.status_of(essence) == job.status.dump()


def test_a_spec_the_models_refuse_loads_metadata_and_status_and_names_the_field() -> None:
    body = example("sft-support-assistant.yaml")
    body["spec"]["method"] = "distillation"
    body["status"] = {"phase": "Pending"}
    job, problem = parse.load(parse.essence(body))
    assert problem is not None
    assert problem.startswith("spec.method:")
    assert job.metadata.name == body["metadata"]["name"]
    assert job.status.phase == "Pending"


def test_an_evalgate_that_is_missing_or_invalid_says_which() -> None:
    gate, problem = parse.evalgate(None, "release", "ml")
    assert gate is None
    assert problem == "EvalGate release not found in namespace ml"
    body = example("evalgate-support-release.yaml")
    body["spec"]["suites"] = "not a list"
    gate, problem = parse.evalgate(body, "release", "ml")
    assert gate is None
    assert problem is not None
    assert problem.startswith("EvalGate release is invalid: spec.suites")
    ok, none = parse.evalgate(example("evalgate-support-release.yaml"), "release", "ml")
    assert ok is not None
    assert none is None
