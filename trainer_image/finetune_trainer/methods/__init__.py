"""One module per method, each wrapping its TRL trainer: `build(run) -> Trainer`.

`Run` carries what every method needs: the contract, the local model folder, the cleaned rows (after the
data gates: duplicates and ties dropped, PII redacted when the policy says so), and the arguments every
method shares (`common_args`), so a method module only adds what is its own.

Devices: bf16 on GPUs, float32 and `use_cpu` on CPUs (so torchrun over CPUs trains one DDP model over
gloo, not one model per process); `batchSize` is split over `world_size` ranks and gradient accumulation.
A method loads its model with `models.load_kwargs` (4-bit NF4 for qlora, GPU only) and passes a QLoRA
model through `models.prepare_quantized` before TRL wraps it in the LoRA of `models.peft_config`. A method
that writes scratch (a DPO reference model) does it through `ranks.local_zero_first`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_api.hyperparameters import Workload, token_lengths, workload
from finetune_api.trainer_config import ResolvedHyperparameters, TrainContract
from finetune_trainer.data.rows import Row
from finetune_trainer.early_stopping import LOGGED


@dataclass
class Run:
    config: TrainContract
    model_dir: Path
    output_dir: Path
    train_rows: list[Row]
    eval_rows: list[Row]
    gpu: bool
    world_size: int = 1
    callbacks: list[Any] = field(default_factory=list)

    @property
    def hp(self) -> ResolvedHyperparameters:
        return self.config.hyperparameters

    def per_device_batch(self) -> int:
        """`batchSize` is the batch of one optimizer step, across devices and accumulation (as OpenAI's)."""
        return max(
            1,
            math.ceil(int(self.hp.batch_size) / (self.world_size * int(self.hp.gradient_accumulation_steps))),
        )

    def steps_per_epoch(self) -> int:
        per_step = self.per_device_batch() * self.world_size * int(self.hp.gradient_accumulation_steps)
        return max(1, math.ceil(len(self.train_rows) / per_step))

    def watching(self) -> bool:
        """Whether early stopping watches held-out rows in this run."""
        return self.config.early_stopping.enabled and bool(self.eval_rows)

    def save_steps(self) -> int:
        """Steps between checkpoints (and evaluations): `saveSteps`; else, while early stopping watches,
        `evaluations` a run (at least one an epoch); else once an epoch."""
        if self.config.checkpointing.save_steps:
            return self.config.checkpointing.save_steps
        per_epoch = self.steps_per_epoch()
        if not self.watching():
            return per_epoch
        total = per_epoch * self.hp.epochs
        return min(per_epoch, max(1, math.ceil(total / self.config.early_stopping.evaluations)))

    def workload(self) -> Workload:
        """The sequences of one epoch and their estimated tokens, by the rule that sized the batch
        (`finetune_api.hyperparameters.workload`), measured on the rows this run trains on."""
        lengths = token_lengths(row.text for row in self.train_rows)
        return workload(
            len(self.train_rows),
            lengths,
            method=self.config.method,
            max_seq_length=self.hp.max_seq_length,
            packing=self.hp.packing,
            rft=self.config.rft,
        )

    def expected_steps(self, sequences: int) -> int:
        """Optimizer steps for `sequences` a epoch: the trainer's count, every epoch ending in a step."""
        per_step = self.per_device_batch() * self.world_size * int(self.hp.gradient_accumulation_steps)
        return self.hp.epochs * max(1, math.ceil(sequences / per_step))

    def common_args(self) -> dict[str, Any]:
        """TrainingArguments every method shares: schedule, precision, checkpoint and eval cadence."""
        hp = self.hp
        total = self.steps_per_epoch() * hp.epochs
        save_steps = self.save_steps()
        evaluating = bool(self.eval_rows)
        args: dict[str, Any] = {
            "output_dir": str(self.output_dir),
            "num_train_epochs": hp.epochs,
            "per_device_train_batch_size": self.per_device_batch(),
            "per_device_eval_batch_size": self.per_device_batch(),
            "gradient_accumulation_steps": hp.gradient_accumulation_steps,
            "learning_rate": hp.learning_rate,
            "warmup_steps": hp.warmup_ratio,  # a float below 1 is a ratio of the total steps
            "weight_decay": hp.weight_decay,
            "lr_scheduler_type": "linear",
            "seed": hp.seed,
            "bf16": self.gpu,  # never on CPU: no bf16 kernels here, 13x slower
            "use_cpu": not self.gpu,  # under torchrun on CPUs: DDP over gloo, not one model per process
            "activation_checkpointing": False,
            "logging_steps": max(1, min(10, total // 20)),
            "save_strategy": "steps",
            "save_steps": save_steps,
            "save_total_limit": 2,  # local copies; staging keeps `keepLast`
            "eval_strategy": "steps" if evaluating else "no",
            "eval_steps": save_steps if evaluating else None,
            "include_num_input_tokens_seen": True,
            "report_to": [],
            "disable_tqdm": True,
            "dataloader_num_workers": 0,
        }
        if self.watching():
            metric = LOGGED[self.config.early_stopping.watched(self.config.method)]
            args |= {"metric_for_best_model": metric, "greater_is_better": metric != "eval_loss"}
        return args


def plain_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with text content parts joined, and OpenAI's `weight` removed (templates do not know it)."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        out.append({k: v for k, v in message.items() if k != "weight"} | {"content": content or ""})
    return out
