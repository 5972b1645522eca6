"""What `finetune run` prints before training starts: the plan's optimizer steps for this machine, then the
trainer's expected time from progress.json, before the progress bar."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_api.base import TokenLengths
from finetune_api.device import Device
from finetune_api.run_layout import DataValidationReport, ProgressReport
from finetune_api.trainer_config import RunContract
from finetune_cli import local, run
from helpers.support import EXAMPLES


class Validated(run.LocalRun):
    """A local run whose `validate-data` passes 300 rows of about 92 tokens without starting a process."""

    def trainer(self, command: str, contract: RunContract, *extra: str, what: str | None = None) -> int:
        report = DataValidationReport(
            passed=True, rows={"training": 300}, tokens=TokenLengths(mean=92, max=101)
        )
        Path(self.plan.layout.data_report).write_text(report.model_dump_json())
        return 0


def test_plan_output_names_the_steps_and_the_expected_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    documents = list(yaml.safe_load_all((EXAMPLES / "quickstart.yaml").read_text()))
    job: dict[str, Any] = next(d for d in documents if d["kind"] == "FineTuneJob")
    job["spec"]["hyperparameters"] = {"maxSeqLength": 256}  # every value "auto"
    del job["spec"]["evalGateRef"], job["spec"]["outputUri"]  # training only
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(job))
    loaded, _ = run.load_job(manifest)
    plan = run.local_plan(loaded, tmp_path / "runs", None)
    staging = Path(plan.layout.root)
    staging.mkdir(parents=True)
    local_run = Validated(plan, staging, tmp_path / "scratch", staging / "trainer.log", Device.cpu())

    contract = run._validate(local_run)
    assert contract is not None
    hp = contract.hyperparameters
    assert (hp.epochs, hp.batch_size, hp.gradient_accumulation_steps) == (3, 8, 1)
    assert "plan: 3 epochs, batch size 8 (8 per device x 1 accumulation x 1 CPU process)" in (
        capsys.readouterr().out
    )
    # the rule before: batch 1, 900 steps of one row
    progress = Path(plan.layout.progress)
    report = ProgressReport(step=0, total_steps=114, expected_seconds=754.0, updated_at=datetime.now(UTC))
    progress.write_text(report.model_dump_json(by_alias=True))
    with subprocess.Popen(["sleep", "2.5"]) as trainer:  # the train command, as long as one poll
        local.watch(trainer, progress)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("expected: 114 optimizer steps, about 12m (the trainer's estimate")
    assert lines[1].startswith("[......")
    assert "step 0/114" in lines[1]


def test_plan_line_names_the_optimizer_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job, _ = run.load_job(EXAMPLES / "quickstart.yaml")
    plan = run.local_plan(job, tmp_path, None)
    staging = Path(plan.layout.root)
    staging.mkdir(parents=True)
    assert run._validate(Validated(plan, staging, tmp_path / "s", staging / "log", Device.cpu())) is not None
    # the quickstart's explicit values (1 epoch, batch 8, learning rate 0.001) are kept
    assert capsys.readouterr().out.splitlines()[-1] == (
        "plan: 1 epoch, batch size 8 (8 per device x 1 accumulation x 1 CPU process), learning rate 0.001; "
        "38 optimizer steps, about 27,600 tokens"
    )
