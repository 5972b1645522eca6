"""Runs of `python -m finetune_trainer train` for the tests: a FineTuneJob for a tiny model and local data,
its trainer contract, and the trainer as a subprocess, exactly as a pod runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from finetune_api.hyperparameters import Resolved
from finetune_api.plan import RunPlan
from finetune_api.trainer_config import StorageTarget
from finetune_api.v1alpha1 import FineTuneJob
from helpers.datagen import chat_rows, jsonl

ENV = {"HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}


def job(
    model: Path,
    data: Path,
    *,
    method: str = "sft",
    fmt: str = "chat",
    adapter: str = "lora",
    save_steps: int | None = 2,
    validation: bool = True,
    spec: dict[str, Any] | None = None,
) -> FineTuneJob:
    datasets: dict[str, Any] = {"training": {"uri": str(data / "train.jsonl"), "format": fmt}}
    if validation:
        datasets["validation"] = {"uri": str(data / "val.jsonl"), "format": fmt}
    return FineTuneJob.model_validate(
        {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "tiny", "namespace": "test", "uid": str(uuid.uuid4())},
            "spec": {
                "method": method,
                "baseModel": {"uri": str(model)},
                "datasets": datasets,
                "adapter": {"type": adapter},
                "checkpointing": {"saveSteps": save_steps, "keepLast": 2},
                # these runs test what a whole run leaves behind; early stopping has tests of its own
                "earlyStopping": {"enabled": False},
                "storage": {"bucket": "unused"},
            }
            | (spec or {}),
        }
    )


def contract(
    tmp: Path,
    model: Path,
    staging: str,
    *,
    rows: int = 32,
    epochs: int = 2,
    batch_size: int = 4,
    learning_rate: float = 5e-3,
    endpoint: str | None = None,
    train_rows: list[dict[str, Any]] | None = None,
    val_rows: list[dict[str, Any]] | None = None,
    **kw: Any,
) -> Path:
    """The trainer.json for a run of `model` on chat rows (or the rows given), staged at `staging`."""
    data = tmp / "data"
    data.mkdir(exist_ok=True)
    (data / "train.jsonl").write_bytes(jsonl(train_rows or chat_rows(rows, seed=1)))
    (data / "val.jsonl").write_bytes(jsonl(val_rows or chat_rows(8, seed=2)))
    config = RunPlan.of(job(model, data, **kw), run="tiny-1").train_contract(
        Resolved(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate)
    )
    config = config.model_copy(update={"storage": StorageTarget(endpoint=endpoint, staging_uri=staging)})
    hp = config.hyperparameters
    config = config.model_copy(update={"hyperparameters": hp.model_copy(update={"max_seq_length": 128})})
    path = tmp / "trainer.json"
    path.write_text(config.model_dump_json(by_alias=True))
    return path


def train(config: Path, workdir: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "finetune_trainer", "train", "--config", str(config)]
    return subprocess.Popen(
        [*command, "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **ENV, **(env or {})},
    )


def run_to_end(config: Path, workdir: Path, env: dict[str, str] | None = None, timeout: int = 300) -> str:
    """Train to completion; the trainer's output, after asserting it exited 0."""
    process = train(config, workdir, env)
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output
