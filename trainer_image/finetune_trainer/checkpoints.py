"""Checkpoints in the run's staging prefix, and resuming from the newest complete one.

The Trainer saves `checkpoint-N/` locally (weights as safetensors, adapter or full; tokenizer/processor;
optimizer, scheduler and RNG state). `StagingCheckpoints.on_save` adds what a reader of the checkpoint needs
to trust it (`finetune/contract.json` the resolved contract, `finetune/datasets.json` the digests of the
data trained on, `finetune/versions.json` the library versions, `finetune/metrics.json`), uploads the
folder to `checkpoints/step-NNNNNNNNN/`, and writes the `COMPLETE` marker last. Then it prunes: the last
`keepLast` complete checkpoints stay, and so does the best one (`run_layout.best_step`: highest grader
reward, else lowest eval loss; the operator records it as the best). Pruning removes a marker before the
files, so a half-deleted checkpoint is never complete either.

Resume: `latest_complete` finds the newest step with a marker; `restore` downloads it into a temporary
folder beside the local output folder's `checkpoint-N`, renamed into place when complete, where
`Trainer.train(resume_from_checkpoint=...)` continues from that step. Files this module adds to a local
checkpoint go through a temporary name too (`storage.replace_file`). Under torchrun, `restore` runs on
local rank 0 only (`ranks.local_zero_first`) and `on_save` on global rank 0 only.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from finetune_api.gate import tree_digest
from finetune_api.run_layout import (
    COMPLETE_MARKER,
    CheckpointMarker,
    StagingLayout,
    best_step,
    step_of,
)
from finetune_trainer.early_stopping import StopWhenFlat
from finetune_trainer.storage import Store, join, replace_file, sha256_of

LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "finetune-operator")


def library_versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def complete_markers(store: Store, layout: StagingLayout) -> list[CheckpointMarker]:
    markers = []
    for uri in store.list(layout.checkpoints):
        if step_of(uri) is not None:
            markers.append(CheckpointMarker.model_validate_json(store.read_bytes(uri)))
    return sorted(markers, key=lambda m: m.step)


def latest_complete(store: Store, layout: StagingLayout) -> int | None:
    markers = complete_markers(store, layout)
    return markers[-1].step if markers else None


def digest(directory: Path) -> str:
    """The checkpoint's digest over its files (`finetune_api.gate.tree_digest`): what a verdict judged."""
    files = [
        (path.relative_to(directory).as_posix(), sha256_of(_chunks(path))[0])
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    ]
    return tree_digest(files)


def _chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(size):
            yield chunk


def restore(store: Store, layout: StagingLayout, step: int, output_dir: Path) -> Path:
    """Download checkpoint `step` to `output_dir/checkpoint-<step>` (Trainer's layout) and return it."""
    local = output_dir / f"checkpoint-{step}"
    print(f"restoring checkpoint step {step} to {local}", flush=True)
    partial = output_dir / f".checkpoint-{step}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    store.download_prefix(layout.checkpoint(step), partial)
    (partial / COMPLETE_MARKER).unlink(missing_ok=True)
    shutil.rmtree(local, ignore_errors=True)
    os.replace(partial, local)
    return local


class StagingCheckpoints(TrainerCallback):
    def __init__(
        self,
        store: Store,
        layout: StagingLayout,
        *,
        keep_last: int,
        provenance: dict[str, Any],
        early_stop: StopWhenFlat | None = None,
    ) -> None:
        self.early_stop = early_stop  # its reason goes into the marker of the checkpoint it stopped at
        self.store = store
        self.layout = layout
        self.keep_last = keep_last
        self.provenance = provenance  # name -> JSON value, written beside every checkpoint
        self.metrics: dict[str, float] = {}

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **_: Any
    ) -> None:
        for key, value in (logs or {}).items():
            wanted = key in ("loss", "grad_norm", "learning_rate") or key.startswith("eval_")
            if wanted and isinstance(value, int | float):
                self.metrics[key] = float(value)

    def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if not state.is_world_process_zero:
            return
        step = state.global_step
        local = Path(args.output_dir) / f"checkpoint-{step}"
        extra = local / "finetune"
        extra.mkdir(exist_ok=True)
        for name, value in {
            **self.provenance,
            "versions": library_versions(),
            "metrics": self.metrics,
        }.items():
            replace_file(extra / f"{name}.json", json.dumps(value, indent=2, default=str).encode())
        prefix = self.layout.checkpoint(step)
        self.store.upload_dir(local, prefix)
        stopped = self.early_stop.reason if self.early_stop is not None else None
        marker = CheckpointMarker(
            step=step, metrics=dict(self.metrics), stopped_early=stopped, created_at=datetime.now(UTC)
        )
        self.store.write_bytes(join(prefix, COMPLETE_MARKER), marker.model_dump_json(by_alias=True).encode())
        self._prune()

    def _prune(self) -> None:
        markers = complete_markers(self.store, self.layout)
        keep = {m.step for m in markers[-self.keep_last :]}
        best = best_step((m.step, m.metrics) for m in markers)
        if best is not None:
            keep.add(best)
        for marker in markers:
            if marker.step in keep:
                continue
            prefix = self.layout.checkpoint(marker.step)
            self.store.delete(join(prefix, COMPLETE_MARKER))
            for uri in self.store.list(prefix):
                self.store.delete(uri)


class SaveAtEnd(TrainerCallback):
    """The last step always saves, whatever the save interval: the finished model is a checkpoint."""

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> Any:
        if state.global_step >= state.max_steps:
            control.should_save = True
        return control
