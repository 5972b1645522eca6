"""RFT: TRL's GRPOTrainer with the spec's grader as the reward.

Rows are OpenAI RFT rows: `messages` (the prompt, normally ending with a user turn) plus any reference fields
the grader reads as `{{item.<field>}}`. A chat row is accepted too: its trailing assistant turn is taken
off the prompt and offered to the grader as `{{item.reference_answer}}`.

Each prompt is sampled `generationsPerPrompt` times (temperature and `maxCompletionTokens` from the spec),
the grader scores every completion (`finetune_trainer.graders`, batched: one sandbox worker or one judge
forward pass per batch), and GRPO turns the scores into group-relative advantages. `klCoefficient` is
GRPO's beta against the frozen reference (the base with the adapter disabled for LoRA).

Sampling is `RftTrainer`'s, through `finetune_trainer.sampling`, not TRL's single `generate` over the
repeated prompts: each distinct prompt is run once and its KV cache shared by its generations, rows leave
the batch as they end (end-of-sequence token, or the token that completes one of `stopStrings`, kept in the
completion), and the model samples in eval mode with a LoRA merged into its float32 weights. On CPU that
samples 1.45x the completion tokens per CPU-second of TRL's sampling (`bench/README.md`); the loss pass,
forward and backward over prompt and completion, is TRL's and is now most of a step.

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

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer
from trl.models import unwrap_model_for_generation

from finetune_trainer import lm_head, sampling
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


class RftTrainer(GRPOTrainer):
    """GRPOTrainer whose sampling is `finetune_trainer.sampling`: each distinct prompt run once, finished
    rows leaving the batch, stop strings, eval mode and a merged LoRA while sampling. On the paths this
    project never configures (vLLM, continuous batching, images, tools, DeepSpeed, FSDP, a cache
    implementation) TRL samples, and stop strings are refused."""

    def __init__(self, *args: Any, stop_strings: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stop_strings = list(stop_strings or [])

    def _own_sampling(self, images: Any, multimodal_fields: Any) -> bool:
        args: Any = self.args
        trl_only = self.use_vllm or self.use_transformers_continuous_batching or self.tools
        distributed = self.is_deepspeed_enabled or self.is_fsdp_enabled
        return not (trl_only or distributed or images or multimodal_fields or args.cache_implementation)

    def _generate_single_turn(
        self,
        prompt_ids: Any,
        images: Any,
        multimodal_fields: Any,
        num_generations: Any,
        has_tool_images: Any = False,
    ) -> Any:
        if not self._own_sampling(images, multimodal_fields):
            if self.stop_strings:
                raise ValueError("rft.stopStrings needs the trainer's own sampling, which this run bypasses")
            return super()._generate_single_turn(  # type: ignore[no-untyped-call]
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        args: Any = self.args
        tokenizer: Any = self.processing_class
        with (
            unwrap_model_for_generation(
                self.model_wrapped,
                self.accelerator,
                generation_kwargs=self.generation_kwargs,
                gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs,
            ) as model,
            torch.no_grad(),
            sampling.sampling_weights(model),
        ):
            ids = sampling.sample(
                model,
                prompt_ids,
                self.generation_config,
                eos=self.eos_token_ids,
                pad=tokenizer.pad_token_id,
                stop_strings=self.stop_strings,
                tokenizer=tokenizer,
            )
        return ids, None  # no sampling log-probabilities, as on TRL's transformers path


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
            # evaluation samples as training does: a device's whole share of the batch at once (TRL
            # samples the accumulated batch in one generation batch and splits only the loss pass)
            "per_device_eval_batch_size": common["per_device_train_batch_size"]
            * common["gradient_accumulation_steps"]
            * generations,
        },
        num_generations=generations,
        max_completion_length=settings.max_completion_tokens,
        temperature=settings.temperature,
        beta=settings.kl_coefficient,
    )
    return RftTrainer(
        model=model,
        reward_funcs=[GraderReward(grader)],
        args=args,
        train_dataset=dataset(run.train_rows),
        eval_dataset=dataset(run.eval_rows) if run.eval_rows else None,
        processing_class=tokenizer,
        peft_config=peft_config(run.config.adapter),
        callbacks=[*run.callbacks, CloseGrader(grader)],
        stop_strings=settings.stop_strings,
    )
