"""The trainer contract built from a FineTuneJob: concrete, complete, and free of secrets."""

from __future__ import annotations

import json

from finetune_api.plan import RunPlan
from finetune_api.trainer_config import TrainContract
from finetune_api.v1alpha1 import FineTuneJob
from helpers.support import example


def build(name: str, rows: int = 1_000) -> TrainContract:
    job = FineTuneJob.model_validate(example(name) | {"metadata": example(name)["metadata"] | {"uid": "u-1"}})
    plan = RunPlan.of(job, run="support-assistant-sft-1")
    return plan.train_contract(plan.resolve(rows))  # for the device the pods request


def test_contract_is_concrete_and_round_trips() -> None:
    config = build("sft-support-assistant.yaml")
    text = json.dumps(config.dump())
    again = TrainContract.model_validate_json(text)
    assert again == config
    data = json.loads(text)
    assert data["contractVersion"] == 1
    assert data["hyperparameters"] == {
        "epochs": 3,
        "batchSize": 2,  # 1,000 packed rows of unmeasured length: 2 windows of 2,048 tokens on an H100
        "learningRate": 1e-4,  # LoRA's 2e-4 at a batch of 8, x sqrt(2 / 8)
        "maxSeqLength": 2048,
        "packing": True,
        "warmupRatio": 0.03,
        "gradientAccumulationSteps": 1,
        "weightDecay": 0.0,
        "seed": 7,
    }
    assert (
        data["storage"]["stagingUri"]
        == "s3://finetune-staging/finetune/ml-platform/support-assistant-sft/support-assistant-sft-1/"
    )
    assert data["storage"]["outputUri"] == "s3://models-prod/support-assistant/v3/"


def test_contract_names_the_secret_nowhere() -> None:
    text = json.dumps(build("sft-support-assistant.yaml").dump())
    assert "finetune-s3" not in text
    assert "credentials" not in text.lower()


def test_method_settings_travel() -> None:
    rft = build("rft-math-grader.yaml").dump()
    assert rft["rft"]["grader"]["weights"] == {"accuracy": 0.7, "safety": 0.2, "brevity": 0.1}
    dpo = build("dpo-helpfulness.yaml").dump()
    assert dpo["distributed"] == {"nodes": 2, "gpusPerNode": 8}
    assert dpo["hyperparameters"]["learningRate"] == 5e-6
