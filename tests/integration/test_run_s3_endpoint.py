"""`finetune run` on s3:// data and an s3:// base model, served by a real S3 (SeaweedFS) named by
`storage.endpoint`: every trainer command reads them from that endpoint, with the shell's credentials,
whatever other endpoint the environment names."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import yaml

from finetune_api.run_layout import COMPLETE_MARKER, DataValidationReport
from helpers.datagen import chat_rows, jsonl
from helpers.s3server import ACCESS_KEY, SECRET_KEY, S3Server
from helpers.s3server import client as s3_client


def test_s3_data_and_model_come_from_the_manifests_endpoint(s3: S3Server, tiny: Path, tmp_path: Path) -> None:
    bucket = f"data-{uuid.uuid4().hex[:8]}"
    client = s3_client(s3.endpoint)
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="sets/train.jsonl", Body=jsonl(chat_rows(12, seed=1)))
    client.put_object(Bucket=bucket, Key="sets/holdout.jsonl", Body=jsonl(chat_rows(4, seed=3)))
    for path in (p for p in tiny.rglob("*") if p.is_file()):
        client.put_object(Bucket=bucket, Key=f"model/{path.relative_to(tiny)}", Body=path.read_bytes())
    job = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "on-s3"},
        "spec": {
            "method": "sft",
            "baseModel": {"uri": f"s3://{bucket}/model/"},
            "datasets": {
                "training": {"uri": f"s3://{bucket}/sets/train.jsonl"},
                "holdout": {"uri": f"s3://{bucket}/sets/holdout.jsonl"},
            },
            "hyperparameters": {"epochs": 1, "batchSize": 4, "learningRate": 0.005, "maxSeqLength": 64},
            "storage": {
                "bucket": "finetune-staging",
                "endpoint": s3.endpoint,
                "credentialsSecretRef": {"name": "s3-credentials"},  # no API server here: ignored
            },
        },
    }
    manifest, workdir = tmp_path / "job.yaml", tmp_path / "work"
    manifest.write_text(yaml.safe_dump(job))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9",  # the manifest's endpoint wins over the shell's
        "AWS_MAX_ATTEMPTS": "1",
    }
    done = subprocess.run(
        [str(Path(sys.executable).with_name("finetune")), "run", str(manifest), "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    said = done.stdout + done.stderr
    assert done.returncode == 0, said
    (report_file,) = workdir.glob("default/on-s3/*/data-report.json")
    report = DataValidationReport.model_validate_json(report_file.read_bytes())
    assert report.rows == {"training": 12, "holdout": 4}
    assert "holdout exact match" in said  # score-holdout read the s3:// holdout and model too
    run = report_file.parent
    assert list(run.glob(f"checkpoints/*/{COMPLETE_MARKER}"))
