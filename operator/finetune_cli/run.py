"""`finetune run FILE.yaml`: one FineTuneJob manifest, executed on this machine without a cluster.

The same path as in a cluster, in the same order, with the same trainer commands the operator's Jobs run
(`python -m finetune_trainer validate-data|train`): the manifest is checked as the API server would check
it, the data gates run, "auto" hyperparameters are resolved from the validated row count by the same rule,
and training writes progress and checkpoints to a local staging folder laid out as in S3
(`<workdir>/<namespace>/<name>/<runId>/`). With a holdout split, the base model and the trained one are
scored on it (`score-holdout`) and both figures are printed.

With an `evalGateRef`, the EvalGate of that name must be in the same file. The best checkpoint is then
evaluated (`evaluate`), the gate decided exactly as the operator decides it (`finetune_api.gate`), and,
when it passes, published (`promote`) to `--output` (by default `<workdir>/<namespace>/<name>/promoted/`;
a laptop run never writes to the job's s3:// outputUri). A gate that requires approval needs
`--approve NAME`, the local form of the approved-by annotation.

The run id is the job's name and a digest of its spec: running an unchanged manifest again resumes (or
finds the run complete); any change starts a new run. `--fresh` starts over.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from finetune_api.gate import EVAL_REPORT, EvalReport, decide, failing
from finetune_api.hyperparameters import resolve
from finetune_api.promotion import EVAL_REPORT_HTML, MANIFEST, MODEL_CARD, digest_of
from finetune_api.run_layout import (
    CHECKPOINTS,
    COMPLETE_MARKER,
    DATA_REPORT,
    PROGRESS,
    CheckpointMarker,
    DataValidationReport,
    ProgressReport,
    checkpoint_prefix,
    promotable_step,
)
from finetune_api.trainer_config import (
    EvaluationTarget,
    PromotionTarget,
    StorageTarget,
    TrainerConfig,
    build_trainer_config,
)
from finetune_api.v1alpha1 import EvalGate, FineTuneJob
from finetune_api.v1alpha1.finetunejob import Approval, GateResult
from finetune_cli import validate

POLL_SECONDS = 2.0


@dataclass(frozen=True)
class Score:
    """A holdout metric as `score-holdout` wrote it: exact match, preference accuracy, or reward."""

    metric: str
    value: float

    @property
    def shown(self) -> str:
        return f"{self.value:.3f}" if self.metric == "reward" else f"{self.value:.1%}"

    def __str__(self) -> str:
        return f"{self.metric} {self.shown}"


class RunError(RuntimeError):
    pass


def load_job(path: Path) -> tuple[FineTuneJob, EvalGate | None]:
    """The file's FineTuneJob, and the EvalGate it references (which must be in the same file)."""
    try:
        text = path.read_text()
    except OSError as err:
        raise RunError(f"{path}: cannot read: {err.strerror}") from err
    results = validate.validate_text(text, str(path))
    problems = [f"{r.label}: {p}" for r in results for p in r.problems]
    if problems:
        raise RunError("\n".join(problems))
    documents = [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    jobs = [d for d in documents if d.get("kind") == "FineTuneJob"]
    if len(jobs) != 1:
        raise RunError(f"{path}: expected one FineTuneJob, found {len(jobs)}")
    try:
        job = FineTuneJob.model_validate(jobs[0])
        gates = [EvalGate.model_validate(d) for d in documents if d.get("kind") == "EvalGate"]
    except ValidationError as err:  # validate_text has already said why; this is a safety net
        raise RunError(str(err)) from err
    ref = job.spec.eval_gate_ref
    if ref is None:
        return job, None
    gate = next((g for g in gates if g.metadata.name == ref.name), None)
    if gate is None:
        found = ", ".join(g.metadata.name for g in gates) or "none"
        raise RunError(
            f"{path}: spec.evalGateRef names EvalGate {ref.name}, not in this file (found: {found})"
        )
    return job, gate


def run_id(job: FineTuneJob) -> str:
    spec = json.dumps(job.spec.model_dump(mode="json", exclude={"suspend", "run_policy"}), sort_keys=True)
    return f"{job.metadata.name}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"


def contract(job: FineTuneJob, staging: Path, resolved: Any) -> TrainerConfig:
    config = build_trainer_config(job, run_id=staging.name, resolved=resolved)
    local = StorageTarget(staging_uri=str(staging.resolve()) + "/")
    return config.model_copy(update={"storage": local})


def _trainer(command: str, config_file: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
        "TOKENIZERS_PARALLELISM": "false",
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "finetune_trainer", command, "--config", str(config_file), *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def _finish(process: subprocess.Popen[bytes], what: str, log: Path) -> int:
    code = process.wait()
    if code != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        print(f"\n{what} failed (exit {code}); the end of {log}:", file=sys.stderr)
        print("\n".join(f"  {line}" for line in tail), file=sys.stderr)
    return code


def _bar(report: ProgressReport, started: float) -> str:
    width = 30
    done = int(width * report.step / report.total_steps)
    parts = [f"[{'#' * done}{'.' * (width - done)}] step {report.step}/{report.total_steps}"]
    if report.loss is not None:
        parts.append(f"loss {report.loss:.4f}")
    if report.eval_loss is not None:
        parts.append(f"eval {report.eval_loss:.4f}")
    if report.tokens_per_second:
        parts.append(f"{report.tokens_per_second:.0f} tok/s")
    elapsed = time.monotonic() - started
    if report.step:
        parts.append(f"eta {max(0.0, elapsed / report.step * (report.total_steps - report.step)):.0f}s")
    return "  ".join(parts)


def _watch(process: subprocess.Popen[bytes], staging: Path) -> None:
    """Draw the progress bar from progress.json while training runs (one line per update off a TTY)."""
    started, shown = time.monotonic(), ""
    tty = sys.stdout.isatty()
    while process.poll() is None:
        time.sleep(POLL_SECONDS)
        try:
            report = ProgressReport.model_validate_json((staging / PROGRESS).read_bytes())
        except (OSError, ValidationError):
            continue
        line = _bar(report, started)
        if tty:
            print("\r" + line, end="", flush=True)
        elif report.updated_at.isoformat() != shown:  # off a TTY, one line per report
            print(line, flush=True)
        shown = report.updated_at.isoformat()
    if tty and shown:
        print()


def _score(config_file: Path, staging: Path, which: str, log: Path, workdir: Path) -> Score | None:
    """The holdout metric of the base model or the newest checkpoint; the base's is scored once per run."""
    result = staging / f"holdout-{which}.json"
    if which == "latest" or not result.exists():
        process = _trainer(
            "score-holdout", config_file, log, "--checkpoint", which, "--workdir", str(workdir)
        )
        if _finish(process, f"score-holdout ({which})", log) != 0:
            return None
    found = json.loads(result.read_text())
    return Score(str(found["metric"]).replace("_", " "), float(found["score"]))


def main(
    path: Path,
    workdir: Path,
    *,
    fresh: bool = False,
    output: Path | None = None,
    approve: str | None = None,
) -> int:
    try:
        job, gate = load_job(path)
    except RunError as err:
        print(err, file=sys.stderr)
        return 1
    namespace = job.metadata.namespace or "default"
    staging = (workdir / namespace / job.metadata.name / run_id(job)).resolve()
    if fresh:
        shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, exist_ok=True)
    scratch = staging.parent / f".{staging.name}.scratch"
    log = staging / "trainer.log"
    config_file = staging / "trainer.json"
    started = time.monotonic()
    print(f"{job.metadata.name}: {job.spec.method} ({job.spec.adapter.type}) of {job.spec.base_model.uri}")
    print(f"run {staging.name}, staging {staging}, log {log}")

    config_file.write_text(contract(job, staging, None).model_dump_json(by_alias=True, indent=2))
    if _finish(_trainer("validate-data", config_file, log), "validate-data", log) != 0:
        report_file = staging / DATA_REPORT
        if report_file.exists():
            report = DataValidationReport.model_validate_json(report_file.read_bytes())
            for rule in report.failed_rules:
                print(f"  data gate: {rule}", file=sys.stderr)
        return 1
    report = DataValidationReport.model_validate_json((staging / DATA_REPORT).read_bytes())
    print(f"data gates passed: {report.rows}")
    spec = job.spec
    resolved = resolve(
        spec.hyperparameters, rows=report.rows["training"], method=spec.method, adapter=spec.adapter.type
    )
    config = contract(job, staging, resolved)
    config_file.write_text(config.model_dump_json(by_alias=True, indent=2))
    print(
        f"hyperparameters: {resolved.epochs} epochs, batch size {resolved.batch_size}, "
        f"learning rate {resolved.learning_rate:g}"
    )
    holdout = spec.datasets.holdout is not None
    before = _score(config_file, staging, "base", log, scratch) if holdout else None
    if before is not None:
        print(f"holdout {before} before training")
    train_started = time.monotonic()
    process = _trainer("train", config_file, log, "--workdir", str(scratch))
    _watch(process, staging)
    if _finish(process, "train", log) != 0:
        return 1
    trained = time.monotonic() - train_started
    after = _score(config_file, staging, "latest", log, scratch) if holdout else None
    _summary(staging, trained, time.monotonic() - started, before, after)
    code = 0
    if gate is not None:
        destination = (output or staging.parent / "promoted").resolve()
        code = _gate(Local(config, staging, scratch, log), gate, destination=destination, approve=approve)
    shutil.rmtree(scratch, ignore_errors=True)
    return code


def _markers(staging: Path) -> list[CheckpointMarker]:
    """The complete checkpoints of a local run, oldest first."""
    found = (staging / CHECKPOINTS).glob(f"*/{COMPLETE_MARKER}")
    return sorted((CheckpointMarker.model_validate_json(p.read_bytes()) for p in found), key=lambda m: m.step)


@dataclass(frozen=True)
class Local:
    """A local run's contract and folders."""

    config: TrainerConfig
    staging: Path
    scratch: Path
    log: Path


def _gate(run: Local, gate: EvalGate, *, destination: Path, approve: str | None) -> int:
    """Evaluate the best checkpoint, decide, and promote what passes; 0 when promoted (or waiting for an
    approval that was not given), 3 when the gate rejects."""
    config, staging, scratch, log = run.config, run.staging, run.scratch, run.log
    step = promotable_step((m.step, m.metrics) for m in _markers(staging))
    if step is None:
        print(f"EvalGate {gate.metadata.name}: no complete checkpoint to evaluate", file=sys.stderr)
        return 1
    checkpoint = str(staging / checkpoint_prefix(step))
    name = gate.metadata.name
    target = EvaluationTarget(
        gate_name=name,
        gate=gate.spec,
        checkpoint_uri=checkpoint,
        checkpoint_step=step,
        baseline=gate.spec.baseline.model or config.base_model,
    )
    evaluate_file = staging / "evaluate.json"
    evaluate_file.write_text(
        config.model_copy(update={"evaluation": target}).model_dump_json(by_alias=True, indent=2)
    )
    print(f"\nEvalGate {name}: evaluating step {step} on {len(gate.spec.suites)} suites")
    (staging / EVAL_REPORT).unlink(missing_ok=True)
    code = _finish(_trainer("evaluate", evaluate_file, log, "--workdir", str(scratch)), "evaluate", log)
    problem, report = None, None
    try:
        report = EvalReport.model_validate_json((staging / EVAL_REPORT).read_bytes())
    except (OSError, ValidationError) as err:
        problem = f"no readable evaluation report: {err}"
    if code != 0 and problem is None:
        problem = f"evaluate exited {code}"
    result = decide(gate.spec, report if problem is None else None, problem=problem)
    result.report_uri = str(staging / EVAL_REPORT)
    for metric in result.metrics:
        print(f"  {'pass' if metric.passed else 'FAIL'}  {metric.suite}: {metric.message}")
    if result.verdict != "Passed":
        print(f"gate {result.verdict.lower()}: nothing promoted ({'; '.join(failing(result)[:3])})")
        return 3
    approval = None
    if gate.spec.require_approval:
        if not approve:
            print("gate passed; it requires approval: run again with --approve NAME to promote")
            return 0
        approval = Approval(decision="Approved", by=approve, at=datetime.now(UTC))
    return _promote(run, destination, step=step, gate_name=name, result=result, approval=approval)


def _promote(
    run: Local, destination: Path, *, step: int, gate_name: str, result: GateResult, approval: Approval | None
) -> int:
    """Publish (once: a version that already has its manifest is this run's, promoted before)."""
    config, staging, log = run.config, run.staging, run.log
    version = destination / staging.name
    target = PromotionTarget(
        checkpoint_uri=str(staging / checkpoint_prefix(step)),
        checkpoint_step=step,
        version_uri=str(version) + "/",
        gate_name=gate_name,
        gate=result,
        approval=approval,
    )
    promote_file = staging / "promote.json"
    promote_file.write_text(
        config.model_copy(update={"promotion": target}).model_dump_json(by_alias=True, indent=2)
    )
    published = (version / MANIFEST).exists()
    if not published and _finish(_trainer("promote", promote_file, log), "promote", log) != 0:
        return 1
    digest = digest_of((version / MANIFEST).read_bytes())
    print(f"promoted: {version} ({digest})")
    print(f"model card: {version / MODEL_CARD}")
    print(f"eval report: {version / EVAL_REPORT_HTML}")
    return 0


def _summary(staging: Path, trained: float, total: float, before: Score | None, after: Score | None) -> None:
    progress = ProgressReport.model_validate_json((staging / PROGRESS).read_bytes())
    checkpoints = [Path(checkpoint_prefix(m.step)).name for m in _markers(staging)]
    print(f"\ntrained {progress.step}/{progress.total_steps} steps in {trained:.0f} s ({total:.0f} s in all)")
    if progress.loss is not None:
        print(
            f"final loss {progress.loss:.4f}"
            + (f", eval loss {progress.eval_loss:.4f}" if progress.eval_loss else "")
        )
    print(f"checkpoints: {', '.join(checkpoints)} in {staging / CHECKPOINTS}")
    if before is not None and after is not None:
        print(f"holdout {before.metric}: {before.shown} before -> {after.shown} after")
