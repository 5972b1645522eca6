"""The operator's pods, run: the Jobs that reconcile decides on (validation, training, and with an EvalGate
evaluation and promotion), executed on this machine exactly as their manifests say (command, env, Secret
keys, ConfigMap and downward-API mounts; `podrun`), against a real S3 server. What the operator hands a pod
is what the trainer reads, and the objects the trainer leaves are what the operator reads back."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from finetune_api.plan import RunPlan
from finetune_api.run_layout import StagingLayout
from finetune_api.v1alpha1 import EvalGate, FineTuneJob
from finetune_operator.observed import Decision, JobObservation, Observed
from finetune_operator.reconcile import reconcile
from finetune_operator.settings import Settings
from finetune_operator.storage.s3 import S3Target, observe_run
from finetune_trainer.promotion import verify
from finetune_trainer.storage import Store
from helpers.datagen import chat_rows, jsonl
from helpers.podrun import run_job
from helpers.s3server import ACCESS_KEY, SECRET_KEY, S3Server
from helpers.s3server import client as s3_client

SECRET = {"s3-credentials": {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}}


@dataclass
class Run:
    """One FineTuneJob driven by pure reconcile, its pods run locally, its storage the real S3 server."""

    job: FineTuneJob
    bucket: str
    s3: S3Server
    root: Path
    observed: Observed
    configmaps: dict[str, dict[str, str]]

    @property
    def target(self) -> S3Target:
        return S3Target(self.s3.endpoint, None, ACCESS_KEY, SECRET_KEY, True, 10.0)

    @property
    def staging(self) -> StagingLayout:
        return RunPlan.of(self.job).layout

    def step(self, **observed: Any) -> Decision:
        """Reconcile on what is observed now, then remember the status and the ConfigMap it decided."""
        self.observed = replace(self.observed, now=datetime.now(UTC), **observed)
        decision = reconcile(replace(self.observed, job=self.job), Settings())
        self.job = self.job.model_copy(update={"status": decision.status})
        for manifest in decision.create:
            if manifest["kind"] == "ConfigMap":
                self.configmaps[manifest["metadata"]["name"]] = manifest["data"]
                self.observed = replace(self.observed, config_data=next(iter(manifest["data"].values())))
        return decision

    def pod(self, manifest: dict[str, Any], what: str) -> JobObservation:
        """Run the Job's pod; the observation of the Job it leaves behind."""
        exited = run_job(manifest, self.root / what, configmaps=self.configmaps, secrets=SECRET)
        assert exited.returncode == 0, exited.output
        self.output = exited.output
        labels = manifest["metadata"]["labels"]
        attempt = labels.get("finetune.dev/attempt")
        return JobObservation(
            manifest["metadata"]["name"], int(attempt) if attempt else None, outcome="Complete"
        )

    def storage(self, **reads: Any) -> Any:
        return observe_run(self.target, self.staging, **reads)


def jobs(decision: Decision) -> list[dict[str, Any]]:
    return [m for m in decision.create if m["kind"] == "Job"]


def trained(
    s3: S3Server, tiny: Path, tmp_path: Path, spec: Callable[[str], dict[str, Any]] | None = None
) -> Run:
    """A FineTuneJob on the tiny model (plus `spec(bucket)`), validated and trained by its own pods (6
    steps)."""
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
            "metadata": {
                "name": "contract",
                "namespace": "team-a",
                "uid": str(uuid.uuid4()),
                "generation": 1,
            },
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
                **(spec(bucket) if spec else {}),
            },
        }
    )
    run = Run(job, bucket, s3, tmp_path, Observed(job=job, now=datetime.now(UTC)), {})
    (validation,) = jobs(run.step())
    validated = run.pod(validation, "validate")
    storage = run.storage(report=True, progress=False, checkpoints=False)
    assert storage.data_report is not None
    assert storage.data_report.rows["training"] == 24

    (training,) = jobs(run.step(validation=validated, storage=storage))
    done = run.pod(training, "train")
    assert "training complete at step 6" in run.output
    storage = run.storage(report=True, progress=True, checkpoints=True)
    assert [c.step for c in storage.checkpoints][-1] == 6
    assert storage.progress is not None
    assert storage.progress.step == storage.progress.total_steps == 6
    run.observed = replace(run.observed, training=(done,), storage=storage)
    return run


def test_the_operators_jobs_validate_and_train_as_their_manifests_say(
    s3: S3Server, tiny: Path, tmp_path: Path
) -> None:
    run = trained(s3, tiny, tmp_path)
    decision = run.step()
    assert decision.status.phase == "Succeeded", decision.status
    assert decision.status.best_checkpoint is not None
    assert decision.status.best_checkpoint.step in {3, 6}


JUDGE = {
    "type": "string_check",
    "name": "matches-reference",
    "input": "{{sample.output_text}}",
    "reference": "{{item.reference_answer}}",
    "operation": "eq",
}


def test_the_evaluation_and_promotion_jobs_gate_and_publish(
    s3: S3Server, tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gate's pods on real S3: evaluate writes the report the operator decides on, promote publishes
    what passed, and the digest the operator records is the manifest's."""
    run = trained(
        s3,
        tiny,
        tmp_path,
        lambda bucket: {"evalGateRef": {"name": "release"}, "outputUri": f"s3://{bucket}/out/"},
    )
    holdout = f"s3://{run.bucket}/data/val.jsonl"
    short = {"maxNewTokens": 8, "batchSize": 4}
    gate = EvalGate.model_validate(
        {
            "metadata": {"name": "release", "namespace": "team-a", "resourceVersion": "7"},
            "spec": {
                "suites": [
                    {
                        "name": "task",
                        "dataset": {"uri": holdout},
                        "metric": "exact_match",
                        "threshold": {"min": 0.0},
                        "generation": short,
                    },
                    {
                        "name": "versus-base",
                        "dataset": {"uri": holdout},
                        "metric": "win_rate",
                        "threshold": {"min": 0.0},
                        "judge": JUDGE,
                        "generation": short,
                    },
                    {
                        "name": "toxicity",
                        "dataset": {"uri": holdout},
                        "metric": "toxicity_rate",
                        "threshold": {"max": 0.0},
                        "generation": short,
                    },
                    {
                        "name": "pii",
                        "dataset": {"uri": holdout},
                        "metric": "pii_leakage",
                        "threshold": {"max": 0.0},
                        "canaries": ["CANARY-contract-test"],
                        "generation": short,
                    },
                ],
                # 8 rows cannot show non-inferiority within any useful tolerance (tests/unit/test_gate.py
                # covers that rule); this test is about the pods that evaluate and promote
                "noRegression": {"enabled": False},
            },
        }
    )
    (evaluation,) = jobs(run.step(gate=gate))
    assert evaluation["metadata"]["name"] == "contract-evaluate"
    evaluated = run.pod(evaluation, "evaluate")
    storage = run.storage(report=False, progress=False, checkpoints=True, eval_report=True)
    assert storage.eval_report is not None, storage
    assert {o.suite: o.rows for o in storage.eval_report.suites} == dict.fromkeys(
        ["task", "versus-base", "toxicity", "pii"], 8
    )
    decision = run.step(evaluation=evaluated, storage=storage)
    assert decision.status.gate is not None
    assert decision.status.gate.verdict == "Passed", decision.status.gate
    assert decision.gate_status is not None
    assert decision.gate_status.history[-1].verdict == "Passed"
    (promotion,) = jobs(decision)
    promoted = run.pod(promotion, "promote")

    version = f"s3://{run.bucket}/out/{run.job.status.run_id}/"
    storage = run.storage(
        report=False, progress=False, checkpoints=True, manifest_uri=version + "MANIFEST.json"
    )
    assert storage.promoted_digest is not None
    done = run.step(promotion=promoted, storage=storage)
    assert done.status.phase == "Succeeded", done.status
    assert done.status.promoted is not None
    assert done.status.promoted.uri == version
    assert done.status.promoted.digest == storage.promoted_digest

    for variable, value in SECRET["s3-credentials"].items():
        monkeypatch.setenv(variable, value)
    checked = verify(Store(s3.endpoint), version)  # every object read back against the manifest
    assert checked.digest == done.status.promoted.digest
    listed = s3_client(s3.endpoint).list_objects_v2(Bucket=run.bucket, Prefix=f"out/{run.job.status.run_id}/")
    objects = {
        o["Key"].rsplit(f"{run.job.status.run_id}/", 1)[1]: o["LastModified"] for o in listed["Contents"]
    }
    assert {"MANIFEST.json", "MODEL_CARD.md", "lineage.json", "eval/report.json", "eval/report.html"} <= set(
        objects
    )
    assert "adapter_model.safetensors" in objects
    assert "optimizer.pt" not in objects  # training state is not part of the model
    assert objects["MANIFEST.json"] == max(objects.values())  # written last
