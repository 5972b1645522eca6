"""`train`: one run of the contract's method, from the newest complete checkpoint if there is one.

Sequence (each step fails with a message that says what to change, exit 1):
1. read the datasets and run the data gates again: the rows trained on are the rows validation passed
   (duplicates and ties dropped, PII redacted under `Redact`), and their digests go into every checkpoint;
   Without a validation file, early stopping (on by default) holds out a seeded share of the training rows
   to watch (`early_stopping`);
2. resolve the base model (`models.materialize`), pick the method module, add the callbacks: early stopping,
   progress (`progress.json` + Prometheus), staging checkpoints (marker last), save at the last step;
3. resume from the newest complete checkpoint under the staging prefix (same run id = same prefix);
4. print the expected optimizer steps, tokens and time (`expectation`; also in progress.json before the
   first step), then train; exit 0 only when the run is complete (its last step, or an early stop, saved
   as a checkpoint); on SIGTERM or SIGINT, save at the end of the step and exit 128 + signal (`stopping`).

Single process on CPU, or under torchrun (WORLD_SIZE/RANK/LOCAL_RANK from the environment) on GPUs
(`finetune_trainer.ranks`): the process group is joined first; the pod's scratch (base model, restored
checkpoint) is written by its local rank 0 alone while the other ranks wait, with a timeout, and use what it
wrote; a failure there fails every rank. Storage (checkpoints, progress) and the metrics endpoint belong to
global rank 0 alone. Every scratch file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from finetune_api.run_layout import duration
from finetune_api.trainer_config import TrainContract
from finetune_api.v1alpha1.finetunejob import EARLY_STOPPING_MIN_TRAINING, AdapterType, Method
from finetune_trainer import flops, ranks, validate
from finetune_trainer.checkpoints import SaveAtEnd, StagingCheckpoints, latest_complete, restore
from finetune_trainer.data import gates
from finetune_trainer.early_stopping import StopWhenFlat, held_out
from finetune_trainer.methods import Run
from finetune_trainer.models import ModelError, materialize
from finetune_trainer.progress import Metrics, ProgressReporter
from finetune_trainer.stopping import StopOnSignal
from finetune_trainer.storage import StorageError, Store

METHODS = {
    "sft": "finetune_trainer.methods.sft",
    "vision": "finetune_trainer.methods.vision",
    "dpo": "finetune_trainer.methods.dpo",
    "rft": "finetune_trainer.methods.rft",
}
SCRATCH_ENV = "FINETUNE_WORKDIR"


class TrainError(RuntimeError):
    pass


def workdir(given: Path | None) -> Path:
    chosen = given or (Path(os.environ[SCRATCH_ENV]) if os.environ.get(SCRATCH_ENV) else None)
    if chosen is None:
        chosen = (
            Path("/scratch/run") if Path("/scratch").is_dir() else Path(tempfile.mkdtemp(prefix="finetune-"))
        )
    chosen.mkdir(parents=True, exist_ok=True)
    return chosen


def prepare(config: TrainContract, store: Store, scratch: Path) -> tuple[Run, dict[str, Any]]:
    module_name = METHODS.get(str(config.method))
    if module_name is None:
        raise TrainError(f"method {config.method} is not available in this trainer image")
    loaded = validate.load(config, store)
    if loaded.failures or "training" not in loaded.splits:
        raise TrainError("; ".join(loaded.failures) or "no training data")
    outcome = gates.run(loaded.splits, config.data_gates)
    if not outcome.report.passed:
        raise TrainError("data gates failed: " + "; ".join(outcome.report.failed_rules))
    import torch  # noqa: PLC0415

    gpu = torch.cuda.is_available()
    train_rows, eval_rows = outcome.rows["training"], outcome.rows.get("validation", [])
    early = config.early_stopping
    if early.enabled and not eval_rows:
        train_rows, eval_rows = held_out(train_rows, early, config.hyperparameters.seed)
        if eval_rows:
            print(
                f"early stopping: no validation file, {len(eval_rows)} of {len(outcome.rows['training'])} "
                f"training rows held out to watch (seed {config.hyperparameters.seed})",
                flush=True,
            )
        else:
            print(
                f"early stopping: no validation file and {len(train_rows)} training rows, too few to hold "
                f"any out (at least {EARLY_STOPPING_MIN_TRAINING}): every step is trained",
                flush=True,
            )
    run = Run(
        config=config,
        model_dir=ranks.local_zero_first(
            "download the base model", lambda: materialize(config.base_model, store, scratch)
        ),
        output_dir=scratch / "checkpoints",
        train_rows=train_rows,
        eval_rows=eval_rows,
        gpu=gpu,
        world_size=ranks.world_size(),
    )
    provenance = {
        "contract": config.model_dump(mode="json", by_alias=True),
        "datasets": {
            name: {"sha256": digest, "rows": outcome.report.rows.get(name, 0)}
            for name, digest in loaded.digests.items()
        },
    }
    return run, provenance


def expectation(run: Run, model: Any) -> tuple[str, float | None]:
    """Before the first step: the log line with the expected optimizer steps, tokens and time, and the
    expected seconds for progress.json (None where there is no estimate). The time is the documented
    throughput estimate of `flops.expected_time`, not a measurement; the progress ETA then follows the
    measured rate."""
    import torch  # noqa: PLC0415

    hp, work = run.hp, run.workload()
    tokens = hp.epochs * work.sequences * work.tokens
    devices = f"{run.world_size} {'GPU' if run.gpu else 'CPU'} rank{'s' if run.world_size > 1 else ''}"
    line = (
        f"expected: {run.expected_steps(work.sequences)} optimizer steps ({run.per_device_batch()} per device"
        f" x {hp.gradient_accumulation_steps} accumulation x {devices}), about {tokens:,} tokens"
    )
    total, trainable = flops.parameter_counts(model)
    seq_len = min(hp.max_seq_length, work.tokens)
    per_token = flops.flops_per_token(model.config, total, trainable, seq_len)
    if run.config.method == Method.DPO:  # the reference pass: one forward over one epoch's pairs
        per_token += flops.forward_per_token(model.config, total, seq_len) / hp.epochs
    timed = flops.expected_time(
        tokens,
        per_token,
        gpu_name=torch.cuda.get_device_name(torch.cuda.current_device()) if run.gpu else None,
        devices=run.world_size,
        threads=torch.get_num_threads(),
        qlora=run.config.adapter.type == AdapterType.QLORA,
    )
    if timed is None:
        return f"{line}; no time estimate for this GPU (set {flops.PEAK_FLOPS_ENV})", None
    seconds, how = timed
    per = f"{per_token / 1e6:,.0f}M" if per_token >= 1e6 else f"{per_token:,.0f}"
    return f"{line}; about {duration(seconds)} ({per} FLOPs a token, {how})", seconds


def main(config: TrainContract, workdir_path: Path | None = None) -> int:
    stop = StopOnSignal()  # SIGTERM/SIGINT: save at the end of the step and exit 128 + signal
    store = Store.for_target(config.storage)
    staging = config.layout
    scratch = workdir(workdir_path)
    try:
        ranks.start()
        run, provenance = prepare(config, store, scratch)

        def resume_from() -> tuple[int | None, Path | None]:
            step = latest_complete(store, staging)
            return step, (restore(store, staging, step, run.output_dir) if step is not None else None)

        resume_step, resume = ranks.local_zero_first("restore the newest checkpoint", resume_from)
        labels = {"namespace": config.namespace, "finetunejob": config.job_name, "run_id": config.run_id}
        metrics = Metrics({**labels, "method": str(config.method)})
        if ranks.rank() == 0:
            metrics.serve()
        keep = config.checkpointing.keep_last
        early = config.early_stopping
        flat = StopWhenFlat(early, early.watched(config.method)) if run.watching() else None
        reporter = ProgressReporter(
            store, staging.progress, metrics, config.hyperparameters.max_seq_length, early_stop=flat
        )
        run.callbacks += [
            *([flat] if flat is not None else []),  # before the two below: they report its reason
            reporter,
            StagingCheckpoints(store, staging, keep_last=keep, provenance=provenance, early_stop=flat),
            SaveAtEnd(),
            stop,
        ]
        trainer = importlib.import_module(METHODS[str(config.method)]).build(run)
        where = f"resuming from step {resume_step}" if resume is not None else "from the base model"
        print(
            f"training {config.method} ({config.adapter.type}) on {len(run.train_rows)} rows, "
            f"{trainer.args.num_train_epochs} epochs, {where}",
            flush=True,
        )
        line, reporter.expected_seconds = expectation(run, trainer.model)
        print(line, flush=True)
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    except (TrainError, ModelError, StorageError, ranks.RankError, ValueError) as err:
        print(f"train failed: {err}", file=sys.stderr)
        return 1
    if stop.exit_code is not None:
        print(f"training stopped at step {trainer.state.global_step}, saved to resume", flush=True)
        return stop.exit_code
    print(f"training complete at step {trainer.state.global_step}", flush=True)
    return 0
