"""SFT: TRL's SFTTrainer on chat or prompt/completion rows, loss on what the assistant says only.

Rows are tokenized here, not by TRL, so the loss mask follows OpenAI's semantics for any chat template:
every assistant message is learned (or the completion, for prompt/completion rows) unless it carries
`"weight": 0`; system, user and tool text is context. The mask comes from rendering the conversation
message by message with the model's own chat template and marking the characters each assistant turn
adds (its content and end-of-turn token). `packing` packs rows into `maxSeqLength` windows without
padding (TRL's best-fit decreasing, with position ids so rows do not attend across each other), and
attends within each row only (`finetune_trainer.attention`).
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from trl import SFTConfig, SFTTrainer

from finetune_trainer import attention, lm_head
from finetune_trainer.data.rows import Row
from finetune_trainer.methods import Run, plain_messages
from finetune_trainer.models import load_kwargs, peft_config, prepare_quantized


class TemplateError(ValueError):
    pass


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], *, prompt: bool) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
    return str(text)


def encode(tokenizer: PreTrainedTokenizerBase, data: dict[str, Any], max_length: int) -> dict[str, list[int]]:
    """input_ids and assistant_masks (1 = learned) for one chat or prompt/completion row."""
    if "messages" in data:
        original = data["messages"]
        messages = plain_messages(original)
        full = _render(tokenizer, messages, prompt=False)
        spans = []
        for i, message in enumerate(original):
            if message.get("role") != "assistant" or message.get("weight") == 0:
                continue
            before = _render(tokenizer, messages[:i], prompt=True)
            upto = _render(tokenizer, messages[: i + 1], prompt=False)
            if not (full.startswith(upto) and upto.startswith(before)):
                raise TemplateError(
                    "the model's chat template renders a conversation differently from its own prefixes, so "
                    "the assistant turns cannot be located for the loss mask"
                )
            spans.append((len(before), len(upto)))
    else:
        prompt, completion = data["prompt"], data["completion"]
        full = prompt + completion + (tokenizer.eos_token or "")
        spans = [(len(prompt), len(full))]
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(lo <= start < hi for lo, hi in spans)) for start, _ in encoded["offset_mapping"]]
    return {"input_ids": encoded["input_ids"][:max_length], "assistant_masks": mask[:max_length]}


def dataset(tokenizer: PreTrainedTokenizerBase, rows: list[Row], max_length: int) -> Dataset:
    return Dataset.from_list([encode(tokenizer, row.data, max_length) for row in rows])


def build(run: Run) -> SFTTrainer:
    lm_head.score_labelled_only()
    tokenizer = AutoTokenizer.from_pretrained(run.model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    packing = run.hp.packing
    kwargs = load_kwargs(run.config.adapter, gpu=run.gpu)
    if packing:
        kwargs["attn_implementation"] = attention.padding_free(gpu=run.gpu)
    model = AutoModelForCausalLM.from_pretrained(run.model_dir, **kwargs)
    common = run.common_args()
    model = prepare_quantized(
        model, run.config.adapter, activation_checkpointing=common["activation_checkpointing"]
    )
    args = SFTConfig(
        **common,
        max_length=run.hp.max_seq_length,
        packing=packing,
        padding_free=packing,
        dataset_num_proc=None,
    )
    max_length = run.hp.max_seq_length
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset(tokenizer, run.train_rows, max_length),
        eval_dataset=dataset(tokenizer, run.eval_rows, max_length) if run.eval_rows else None,
        processing_class=tokenizer,
        peft_config=peft_config(run.config.adapter),
        callbacks=run.callbacks,
    )
