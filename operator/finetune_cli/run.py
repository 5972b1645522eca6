"""`finetune run FILE.yaml`: one FineTuneJob manifest, executed on this machine without a cluster.

This is the second executor of a job's run plan (`finetune_api.plan.RunPlan`), the operator being the
first: the same phases in the same order, each the same trainer command the operator's Jobs run, on the
same contracts, with local processes in place of Jobs and a local folder in place of S3. The manifest is
checked as the API server would check it, then:

    validate   `validate-data`: the data gates; "auto" hyperparameters resolved from the validated rows
               for this machine (`local.device`), printed with the optimizer steps they mean
    train      `train`, with the holdout scored before and after (`score-holdout`) when there is one;
               the trainer's expected time is printed before its first step, then a progress bar
    evaluate   with an `evalGateRef` (the EvalGate must be in the same file): `evaluate` on the plan's
               candidate checkpoint, and the plan's verdict, exactly as the operator decides it
    approve    a gate that requires approval needs `--approve NAME`; no API server vouches for a local
               name, so the record (status, model card) says "NAME (local run, not authenticated)"
    promote    `promote` to the plan's version under `--output` (by default
               `<workdir>/<namespace>/<name>/promoted/`; a laptop run never writes to an s3:// outputUri)

The run id is the plan's: running an unchanged manifest again resumes (or finds the run complete); any
change starts a new run. `--fresh` starts over. Exit codes: 0 done (or waiting for an approval that was
not given), 1 an error, 3 the gate rejected the candidate, 130 / 143 stopped by SIGINT / SIGTERM: the
trainer is stopped with the same signal (`train` saves a checkpoint at the end of its step first, so the
next run resumes from it) and nothing of it is left running (`local`).

Storage: `storage.endpoint`, `region` and `forcePathStyle` reach every trainer command through its
contract, so s3:// datasets, base models and EvalGate suites are read from that endpoint. Credentials come
from this shell's environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or boto3's other sources): no
API server here can read `credentialsSecretRef`'s Secret.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml
from pydantic import ValidationError

from finetune_api.device import Device
from finetune_api.errors import PermanentError
from finetune_api.gate import EvalReport, failing
from finetune_api.plan import RunPlan, candidate
from finetune_api.promotion import EVAL_REPORT_HTML, MODEL_CARD, digest_of
from finetune_api.run_layout import (
    COMPLETE_MARKER,
    CheckpointMarker,
    DataValidationReport,
    HoldoutModel,
    ProgressReport,
)
from finetune_api.trainer_config import RunContract, TrainContract
from finetune_api.v1alpha1 import EvalGate, FineTuneJob
from finetune_api.v1alpha1.conditions import Verdict
from finetune_api.v1alpha1.finetunejob import Approval
from finetune_cli import local, validate

REJECTED = 3


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


def local_plan(job: FineTuneJob, workdir: Path, output: Path | None) -> RunPlan:
    """The job's plan, staged under `workdir` and published under `output` (or the job's promoted/)."""
    staged = RunPlan.of(job, staging_root=f"{workdir.resolve()}/")
    published = f"{output.resolve()}/" if output is not None else f"{staged.job_root}promoted/"
    return RunPlan.of(job, staging_root=staged.staging_root, output_root=published)


# Where each command's contract is written, inside the run's staging folder.
CONTRACT_FILES = {
    "validate-data": "trainer.json",
    "train": "trainer.json",
    "score-holdout": "trainer.json",
    "evaluate": "evaluate.json",
    "promote": "promote.json",
}


@dataclass(frozen=True)
class LocalRun:
    """A plan being executed here: its staging folder, scratch space and log."""

    plan: RunPlan
    staging: Path
    scratch: Path
    log: Path
    device: Device  # what "auto" hyperparameters are resolved for: this machine

    def trainer(self, command: str, contract: RunContract, *extra: str, what: str | None = None) -> int:
        """Run a trainer command on `contract` to the end; its exit code."""
        process = local.start(command, contract, self.staging / CONTRACT_FILES[command], self.log, *extra)
        return local.finish(process, what or command, self.log)

    def markers(self) -> list[CheckpointMarker]:
        """The complete checkpoints of the run, oldest first."""
        found = Path(self.plan.layout.checkpoints).glob(f"*/{COMPLETE_MARKER}")
        return sorted(
            (CheckpointMarker.model_validate_json(p.read_bytes()) for p in found), key=lambda m: m.step
        )


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
    plan = local_plan(job, workdir, output)
    staging = Path(plan.layout.root)
    if fresh:
        shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, exist_ok=True)
    scratch, log = staging.parent / f".{staging.name}.scratch", staging / "trainer.log"
    run = LocalRun(plan, staging, scratch, log, local.device())
    started = time.monotonic()
    print(f"{job.metadata.name}: {job.spec.method} ({job.spec.adapter.type}) of {job.spec.base_model.uri}")
    print(f"run {plan.run_id}, staging {staging}, log {run.log}, on {run.device}")
    try:
        with local.stopping_on_signals():
            contract = _validate(run)
            if contract is None or not _train(run, contract, started):
                return 1
            code = 0 if gate is None else _gate(run, contract, gate, approve=approve)
    except PermanentError as err:
        print(f"{err.reason}: {err.message}", file=sys.stderr)
        return 1
    except local.StopSignalError as stop:
        saved = run.markers()
        where = f"step {saved[-1].step} is saved; " if saved else ""
        print(f"\nstopped by {stop}: {where}run the same command again to resume", file=sys.stderr)
        return stop.exit_code
    shutil.rmtree(run.scratch, ignore_errors=True)
    return code


def _validate(run: LocalRun) -> TrainContract | None:
    """The data gates; the training contract with "auto" resolved from the validated rows for this machine
    (the plan line names the optimizer steps; the trainer's expected time follows when it has loaded the
    model), or None."""
    plan = run.plan
    report_file = Path(plan.layout.data_report)
    if run.trainer("validate-data", plan.validate_contract()) != 0:
        if report_file.exists():
            report = DataValidationReport.model_validate_json(report_file.read_bytes())
            for rule in report.failed_rules:
                print(f"  data gate: {rule}", file=sys.stderr)
        return None
    report = DataValidationReport.model_validate_json(report_file.read_bytes())
    print(f"data gates passed: {report.rows}")
    hp = plan.resolve(report.rows["training"], report.tokens, run.device)
    print(f"plan: {hp.summary()}")
    return plan.train_contract(hp)


def _train(run: LocalRun, contract: TrainContract, started: float) -> bool:
    """Train (resuming from the newest complete checkpoint), with the holdout scored around it."""
    holdout = contract.holdout is not None
    before = _score(run, contract, "base") if holdout else None
    if before is not None:
        print(f"holdout {before} before training")
    train_started = time.monotonic()
    process = local.start(
        "train", contract, run.staging / CONTRACT_FILES["train"], run.log, "--workdir", str(run.scratch)
    )
    local.watch(process, Path(run.plan.layout.progress))
    if local.finish(process, "train", run.log) != 0:
        return False
    trained = time.monotonic() - train_started
    after = _score(run, contract, "latest") if holdout else None
    _summary(run, trained, time.monotonic() - started, before, after)
    return True


def _score(run: LocalRun, contract: TrainContract, which: HoldoutModel) -> Score | None:
    """The holdout metric of the base model or the newest checkpoint; the base's is scored once per run."""
    result = Path(run.plan.layout.holdout_score(which))
    if which == "latest" or not result.exists():
        extra = ("--checkpoint", which, "--workdir", str(run.scratch))
        if run.trainer("score-holdout", contract, *extra, what=f"score-holdout ({which})") != 0:
            return None
    found = json.loads(result.read_text())
    return Score(str(found["metric"]).replace("_", " "), float(found["score"]))


def _gate(run: LocalRun, contract: TrainContract, gate: EvalGate, *, approve: str | None) -> int:
    """Evaluate the plan's candidate, decide, and promote what passes: 0 when promoted (or waiting for an
    approval that was not given), 3 when the gate rejects."""
    plan, name = run.plan, gate.metadata.name
    step = candidate((m.step, m.metrics) for m in run.markers())
    if step is None:
        print(f"EvalGate {name}: no complete checkpoint to evaluate", file=sys.stderr)
        return 1
    print(f"\nEvalGate {name}: evaluating step {step} on {len(gate.spec.suites)} suites")
    report_file = Path(plan.layout.eval_report)
    report_file.unlink(missing_ok=True)
    code = run.trainer(
        "evaluate", plan.evaluate_contract(contract, gate, step), "--workdir", str(run.scratch)
    )
    report, unreadable, digest = None, None, None
    try:
        body = report_file.read_bytes()
        report, digest = EvalReport.model_validate_json(body), hashlib.sha256(body).hexdigest()
    except OSError:
        pass  # no report: the verdict says the evaluation wrote none
    except ValidationError as err:
        unreadable = f"{report_file} is unreadable: {err}"
    failed = f"exit {code}" if code != 0 else None
    result = plan.verdict(
        gate.spec,
        report,
        runner="evaluate",
        report_digest=digest,
        unreadable=unreadable,
        failed=failed,
        at=datetime.now(UTC),
    )
    for metric in result.metrics:
        print(f"  {'pass' if metric.passed else 'FAIL'}  {metric.suite}: {metric.message}")
    if result.verdict != Verdict.PASSED:
        print(f"gate {result.verdict.lower()}: nothing promoted ({'; '.join(failing(result)[:3])})")
        return REJECTED
    approval = None
    if gate.spec.require_approval:
        if not approve:
            print(
                f"gate passed (verdict {result.verdict_id}); it requires approval: run again with --approve"
            )
            return 0
        approval = Approval(
            decision="Approved",
            by=f"{approve} (local run, not authenticated)",
            at=datetime.now(UTC),
            verdict_id=result.verdict_id,
        )
    promote = plan.promote_contract(contract, gate_name=name, result=result, approval=approval, step=step)
    manifest = Path(plan.manifest_uri)
    if not manifest.exists() and run.trainer("promote", promote) != 0:  # published once, never rewritten
        return 1
    version = Path(plan.version_uri)
    print(f"promoted: {version} ({digest_of(manifest.read_bytes())})")
    print(f"model card: {version / MODEL_CARD}")
    print(f"eval report: {version / EVAL_REPORT_HTML}")
    return 0


def _summary(run: LocalRun, trained: float, total: float, before: Score | None, after: Score | None) -> None:
    layout = run.plan.layout
    progress = ProgressReport.model_validate_json(Path(layout.progress).read_bytes())
    checkpoints = [Path(layout.checkpoint(m.step)).name for m in run.markers()]
    print(f"\ntrained {progress.step}/{progress.total_steps} steps in {trained:.0f} s ({total:.0f} s in all)")
    if progress.stopped_early:
        print(progress.stopped_early)
    if progress.loss is not None:
        print(
            f"final loss {progress.loss:.4f}"
            + (f", eval loss {progress.eval_loss:.4f}" if progress.eval_loss else "")
        )
    print(f"checkpoints: {', '.join(checkpoints)} in {layout.checkpoints.rstrip('/')}")
    if before is not None and after is not None:
        print(f"holdout {before.metric}: {before.shown} before -> {after.shown} after")
