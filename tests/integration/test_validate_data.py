"""`validate-data` as the validation Job runs it: the contract file, datasets (and a vision job's images) in a
real S3 (SeaweedFS), the report written where the operator reads it, and the exit code the Job's outcome
comes from."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from pathlib import Path

from finetune_api.plan import RunPlan
from finetune_api.run_layout import StagingLayout
from finetune_api.v1alpha1 import FineTuneJob
from finetune_operator.storage.s3 import S3Target, observe_run
from helpers.datagen import chat_rows, jsonl, near_copy
from helpers.s3server import ACCESS_KEY, SECRET_KEY, S3Server
from helpers.s3server import client as s3_client
from helpers.support import example, merge_patch
from helpers.visiondata import label_rows, png_bytes


def _contract(
    s3: S3Server, tmp_path: Path, bucket: str, *, sha256: str | None = None
) -> tuple[Path, StagingLayout]:
    doc = merge_patch(
        example("sft-support-assistant.yaml"),
        {
            "metadata": {"uid": str(uuid.uuid4())},
            "spec": {
                "datasets": {
                    "training": {"uri": f"s3://{bucket}/train.jsonl", "sha256": sha256},
                    "validation": {"uri": f"s3://{bucket}/val.jsonl"},
                    "holdout": None,
                },
                "storage": {"endpoint": s3.endpoint, "bucket": bucket},
                "dataGates": {"minRows": 10},
            },
        },
    )
    job = FineTuneJob.model_validate(doc)
    contract = RunPlan.of(job, run="run-1").validate_contract()
    path = tmp_path / "trainer.json"
    path.write_text(contract.model_dump_json(by_alias=True))
    return path, contract.layout


def _validate(config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    return subprocess.run(
        [sys.executable, "-m", "finetune_trainer", "validate-data", "--config", str(config)],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_reports_pass_and_failure_through_s3_to_the_operator(s3: S3Server, tmp_path: Path) -> None:
    bucket = f"data-{uuid.uuid4().hex[:8]}"
    client = s3_client(s3.endpoint)
    client.create_bucket(Bucket=bucket)
    rows = chat_rows(120, seed=11)
    client.put_object(Bucket=bucket, Key="train.jsonl", Body=jsonl(rows))
    client.put_object(Bucket=bucket, Key="val.jsonl", Body=jsonl(chat_rows(20, seed=12)))
    config, staging = _contract(s3, tmp_path, bucket)
    target = S3Target(s3.endpoint, None, ACCESS_KEY, SECRET_KEY, True, 5.0)

    passed = _validate(config)
    assert passed.returncode == 0, passed.stderr
    assert "data gates passed: rows {'training': 120, 'validation': 20}" in passed.stdout
    seen = observe_run(target, staging, report=True, progress=False, checkpoints=False)
    assert seen.data_report is not None
    assert seen.data_report.passed
    assert seen.data_report.rows == {"training": 120, "validation": 20}

    leaking = chat_rows(18, seed=12) + [near_copy(r) for r in rows[:2]]
    client.put_object(Bucket=bucket, Key="val.jsonl", Body=jsonl(leaking) + b'{"messages": "oops"}\n')
    failed = _validate(config)
    assert failed.returncode == 1
    report = observe_run(target, staging, report=True, progress=False, checkpoints=False).data_report
    assert report is not None
    assert not report.passed
    assert report.failed_rules == [
        f"1 malformed rows (first: s3://{bucket}/val.jsonl:21: "
        "messages: expected a non-empty list of messages)",
        "leakage rate 10.0% > 0.0% (2 of 20 evaluation rows repeat training rows)",
    ]


def test_a_missing_file_or_a_changed_digest_fails_with_the_reason(s3: S3Server, tmp_path: Path) -> None:
    bucket = f"data-{uuid.uuid4().hex[:8]}"
    client = s3_client(s3.endpoint)
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="train.jsonl", Body=jsonl(chat_rows(30)))
    config, _ = _contract(s3, tmp_path, bucket, sha256="0" * 64)
    result = _validate(config)
    assert result.returncode == 1
    assert f"validation: cannot read s3://{bucket}/val.jsonl: NoSuchKey" in result.stdout
    assert f"training: s3://{bucket}/train.jsonl has sha256 " in result.stdout
    assert "the spec expects " + "0" * 64 in result.stdout


def test_a_vision_job_refuses_images_training_would_refuse_naming_each_row(
    s3: S3Server, tmp_path: Path
) -> None:
    """Every image is read and decoded before training: inline and stored ones pass; a remote URL, an
    object that is not an image, a missing object and a missing file each fail, named by split, line and
    image."""
    bucket = f"data-{uuid.uuid4().hex[:8]}"
    client = s3_client(s3.endpoint)
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="images/red.png", Body=png_bytes("red", random.Random(1)))
    client.put_object(Bucket=bucket, Key="images/broken.png", Body=b"not a png")
    training = [*label_rows(12, seed=1), {"image": f"s3://{bucket}/images/red.png", "label": "red"}]
    client.put_object(Bucket=bucket, Key="train.jsonl", Body=jsonl(training))
    client.put_object(Bucket=bucket, Key="val.jsonl", Body=jsonl(label_rows(5, seed=2)))
    doc = merge_patch(
        example("vision-product-classifier.yaml"),
        {
            "metadata": {"uid": str(uuid.uuid4())},
            "spec": {
                "datasets": {
                    "training": {"uri": f"s3://{bucket}/train.jsonl"},
                    "validation": {"uri": f"s3://{bucket}/val.jsonl"},
                },
                "vision": {"labels": None},
                "storage": {"endpoint": s3.endpoint, "bucket": bucket},
            },
        },
    )
    contract = RunPlan.of(FineTuneJob.model_validate(doc), run="run-1").validate_contract()
    config = tmp_path / "trainer.json"
    config.write_text(contract.model_dump_json(by_alias=True))

    passed = _validate(config)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "data gates passed: rows {'training': 13, 'validation': 5}" in passed.stdout

    bad = label_rows(5, seed=2)
    bad[1]["image"] = "https://example.com/cat.png"
    bad[2]["image"] = f"s3://{bucket}/images/broken.png"
    bad[3]["image"] = f"s3://{bucket}/images/gone.png"
    bad[4]["image"] = str(tmp_path / "missing.png")
    client.put_object(Bucket=bucket, Key="val.jsonl", Body=jsonl(bad))
    failed = _validate(config)
    assert failed.returncode == 1
    report = observe_run(
        S3Target(s3.endpoint, None, ACCESS_KEY, SECRET_KEY, True, 5.0),
        contract.layout,
        report=True,
        progress=False,
        checkpoints=False,
    ).data_report
    assert report is not None
    assert not report.passed
    rules = report.failed_rules
    assert len(rules) == 4, rules
    assert rules[0].startswith("validation line 2: image 1: https://example.com/cat.png is not fetched")
    assert rules[1].startswith(
        f"validation line 3: image 1 (s3://{bucket}/images/broken.png) cannot be decoded: cannot identify"
    )
    assert rules[2] == f"validation line 4: image 1: cannot read s3://{bucket}/images/gone.png: NoSuchKey"
    assert rules[3].startswith(f"validation line 5: image 1: cannot read {tmp_path}/missing.png")
    for rule in rules:
        assert rule in failed.stdout
