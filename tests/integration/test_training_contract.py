"""The operator's pods, run: the validation Job and the training Job that reconcile decides on, executed on
this machine exactly as their manifests say (command, env, Secret keys, ConfigMap and downward-API mounts;
`podrun`), against a real S3 server. What the operator hands a pod is what the trainer reads, and the
objects the trainer leaves are what the operator reads back to call the job Succeeded."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from datagen import chat_rows, jsonl
from finetune_api.trainer_config import staging_uri
from finetune_api.v1alpha1 import FineTuneJob
from finetune_operator.observed import JobObservation, Observed
from finetune_operator.reconcile.machine import reconcile
from finetune_operator.settings import Settings
from finetune_operator.storage.s3 import S3Target, observe_run
from podrun import run_job
from s3server import ACCESS_KEY, SECRET_KEY, S3Server
from s3server import client as s3_client

SECRET = {"s3-credentials": {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}}


@pytest.mark.integration
def test_the_operators_jobs_validate_and_train_as_their_manifests_say(
    s3: S3Server, tiny: Path, tmp_path: Path
) -> None:
    bucket = f"contract-{uuid.uuid4().hex[:8]}"
    client = s3_client(s3.endpoint)
    client.create_bucket(Bucket=bucket)
    for path in tiny.iterdir():
        client.put_object(Bucket=bucket, Key=f"models/tiny/{path.name}", Body=path.read_bytes())
    client.put_object(Bucket=bucket, Key="data/train.jsonl", Body=jsonl(chat_rows(24, seed=1)))
    client.put_object(Bucket=bucket, Key="data/val.jsonl", Body=jsonl(chat_rows(8, seed=2)))

    job = FineTuneJob.model_validate(
        {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "contract", "namespace": "team-a", "uid": str(uuid.uuid4())}
            | {"generation": 1},
            "spec": {
                "method": "sft",
                "baseModel": {"uri": f"s3://{bucket}/models/tiny/"},
                "datasets": {
                    "training": {"uri": f"s3://{bucket}/data/train.jsonl"},
                    "validation": {"uri": f"s3://{bucket}/data/val.jsonl"},
                },
                "hyperparameters": {"epochs": 1, "batchSize": 4, "learningRate": 0.005, "maxSeqLength": 128},
                "checkpointing": {"saveSteps": 3, "keepLast": 1},
                "storage": {
                    "bucket": bucket,
                    "endpoint": s3.endpoint,
                    "credentialsSecretRef": {"name": "s3-credentials"},
                },
            },
        }
    )
    settings = Settings()
    target = S3Target(s3.endpoint, None, ACCESS_KEY, SECRET_KEY, True, 10.0)

    first = reconcile(Observed(job=job, now=datetime.now(UTC)), settings)
    (validation,) = first.create
    validated = run_job(validation, tmp_path / "validate", secrets=SECRET)
    assert validated.returncode == 0, validated.output
    job = job.model_copy(update={"status": first.status})
    staging = staging_uri(job, first.status.run_id or "")
    storage = observe_run(target, staging, report=True, progress=False, checkpoints=False)
    assert storage.data_report is not None
    assert storage.data_report.rows["training"] == 24

    second = reconcile(
        Observed(
            job=job,
            now=datetime.now(UTC),
            validation=JobObservation(name=validation["metadata"]["name"], outcome="Complete"),
            storage=storage,
        ),
        settings,
    )
    kinds = {m["kind"]: m for m in second.create}
    assert set(kinds) == {"ConfigMap", "Job"}
    configmap, training = kinds["ConfigMap"], kinds["Job"]
    trained = run_job(
        training,
        tmp_path / "train",
        configmaps={configmap["metadata"]["name"]: configmap["data"]},
        secrets=SECRET,
    )
    assert trained.returncode == 0, trained.output
    assert "training complete at step 6" in trained.output

    job = job.model_copy(update={"status": second.status})
    storage = observe_run(target, staging, report=True, progress=True, checkpoints=True)
    assert [c.step for c in storage.checkpoints][-1] == 6
    assert storage.progress is not None
    assert storage.progress.step == storage.progress.total_steps == 6
    third = reconcile(
        Observed(
            job=job,
            now=datetime.now(UTC),
            validation=JobObservation(name=validation["metadata"]["name"], outcome="Complete"),
            training=(JobObservation(name=training["metadata"]["name"], attempt=1, outcome="Complete"),),
            config_data=next(iter(configmap["data"].values())),
            storage=storage,
        ),
        settings,
    )
    assert third.status.phase == "Succeeded", third.status
    assert third.status.best_checkpoint is not None
    assert third.status.best_checkpoint.step in {3, 6}
