"""RFT: TRL's GRPOTrainer with the spec's grader as the reward.

Rows are OpenAI RFT rows: `messages` (the prompt, normally ending with a user turn) plus any reference fields
the grader reads as `{{item.<field>}}`. A chat row is accepted too: its trailing assistant turn is taken
off the prompt and offered to the grader as `{{item.reference_answer}}`.

Each prompt is sampled `generationsPerPrompt` times (temperature and `maxCompletionTokens` from the spec),
the grader scores every completion (`finetune_trainer.graders`, batched: one sandbox worker or one judge
forward pass per batch), and GRPO turns the scores into group-relative advantages. `klCoefficient` is
GRPO's beta against the frozen reference (the base with the adapter disabled for LoRA).

`batchSize` counts prompts per optimizer step, so each device processes `per_device_batch x generations`
completions. With a validation split, evaluation samples the validation prompts and logs `eval_reward`,
the mean grader score: early stopping on `grader_score` watches it (higher is better) and the best
checkpoint is the one with the highest.

A completion the grader cannot score (its python code raised, a judge gave no number) gets reward 0; the
count is logged as `grader_errors`, and the first error of each batch goes to the log with its message.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from finetune_trainer import lm_head
from finetune_trainer.data.rows import Row
from finetune_trainer.graders import Compiled, compile_grader, sample_from_text
from finetune_trainer.methods import Run, plain_messages
from finetune_trainer.models import load_kwargs, peft_config, prepare_quantized

log = logging.getLogger(__name__)
ITEM_COLUMN = "item_json"  # the row as JSON: Arrow cannot hold arbitrary per-row reference fields


def prompt_and_item(data: dict[str, Any]) -> dict[str, Any]:
    """The conversational prompt GRPO samples from, and the item the grader sees."""
    messages = plain_messages(data["messages"])
    item = {k: v for k, v in data.items() if k != "metadata"}
    if messages and messages[-1]["role"] == "assistant":
        item.setdefault("reference_answer", messages[-1]["content"])
        while messages and messages[-1]["role"] == "assistant":
            messages.pop()
    return {"prompt": messages, ITEM_COLUMN: json.dumps(item)}


def dataset(rows: list[Row]) -> Dataset:
    return Dataset.from_list([prompt_and_item(row.data) for row in rows])


def completion_text(completion: Any) -> str:
    """The text of one GRPO completion: a string, or a list of assistant messages (conversational)."""
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content") or "") for m in completion if isinstance(m, dict))


class GraderReward:
    """A GRPO reward function backed by a compiled grader; TRL logs it under the grader's name."""

    def __init__(self, grader: Compiled) -> None:
        self.grader = grader
        self.__name__ = grader.name

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        samples = [sample_from_text(completion_text(c)) for c in completions]
        items = [json.loads(raw) for raw in columns[ITEM_COLUMN]]
        results = self.grader.grade(samples, items)
        failed = [r.error for r in results if r.error is not None]
        if failed:
            log.warning(
                "grader %s could not score %d of %d: %s", self.__name__, len(failed), len(results), failed[0]
            )
        log_metric = columns.get("log_metric")
        if callable(log_metric):
            log_metric("grader_errors", float(len(failed)))
        return [r.score for r in results]


class CloseGrader(TrainerCallback):
    """Stops the grader's sandbox worker and frees its judge model when training ends."""

    def __init__(self, grader: Compiled) -> None:
        self.grader = grader

    def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.grader.close()


def build(run: Run) -> GRPOTrainer:
    settings = run.config.rft
    if settings is None:
        raise ValueError("method rft needs rft settings with a grader")
    lm_head.score_labelled_only()
    tokenizer = AutoTokenizer.from_pretrained(run.model_dir, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        run.model_dir, **load_kwargs(run.config.adapter, gpu=run.gpu)
    )
    model = prepare_quantized(model, run.config.adapter, activation_checkpointing=False)
    grader = compile_grader(settings.grader, scratch=run.output_dir.parent / "grader")
    generations = settings.generations_per_prompt
    common = run.common_args()
    args = GRPOConfig(
        **common
        | {
            "per_device_train_batch_size": common["per_device_train_batch_size"] * generations,
            "per_device_eval_batch_size": common["per_device_eval_batch_size"] * generations,
        },
        num_generations=generations,
        max_completion_length=settings.max_completion_tokens,
        temperature=settings.temperature,
        beta=settings.kl_coefficient,
    )
    return GRPOTrainer(
        model=model,
        reward_funcs=[GraderReward(grader)],
        args=args,
        train_dataset=dataset(run.train_rows),
        eval_dataset=dataset(run.eval_rows) if run.eval_rows else None,
        processing_class=tokenizer,
        peft_config=peft_config(run.config.adapter),
        callbacks=[*run.callbacks, CloseGrader(grader)],
    )
