"""What the trainer benchmarks (`sft_throughput`, `dpo_throughput`, `grpo_throughput`) share: the CPU
settings both sides train with, the callback that marks the clocks after the warm-up and the timed steps,
and running each side in a process of its own (so that its peak RSS is its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ENV = {"HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}
CPU_TRAINING: dict[str, Any] = {
    "num_train_epochs": 100,  # the meter stops the run
    "use_cpu": True,
    "bf16": False,
    "activation_checkpointing": False,
    "report_to": "none",
}


def meter(counts: Callable[[], tuple[Any, ...]], warmup: int, steps: int) -> Any:
    """A callback that notes (wall clock, CPU clock, *counts()) after step `warmup` and after step
    `warmup + steps` in `marks`, then stops the run."""
    from transformers import TrainerCallback  # noqa: PLC0415

    class Meter(TrainerCallback):
        def __init__(self) -> None:
            self.marks: dict[int, tuple[Any, ...]] = {}

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step in (warmup, warmup + steps):
                self.marks[state.global_step] = (time.perf_counter(), time.process_time(), *counts())
            if state.global_step >= warmup + steps:
                control.should_training_stop = True
            return control

    return Meter()


def timed_span(metered: Any, trainer: Any, warmup: int, steps: int) -> tuple[tuple[Any, ...], ...]:
    """The marks after the warm-up and after the last timed step; an error if the run ended before."""
    marks = metered.marks
    if len(marks) < 2:
        raise RuntimeError(f"the run ended after {trainer.state.global_step} steps, before the last mark")
    return marks[warmup], marks[warmup + steps]


def in_own_process(script: str, which: str, model_dir: Path, flags: list[str]) -> dict[str, Any]:
    """Runs `script --worker which` with `flags` and returns the JSON line it prints last."""
    command = [sys.executable, script, "--worker", which, "--model-dir", str(model_dir), *flags]
    done = subprocess.run(command, env={**ENV, **os.environ}, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {which} run failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
