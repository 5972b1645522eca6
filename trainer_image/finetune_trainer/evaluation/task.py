"""Task metrics on the holdout split: batched greedy generation, then exact match per row.

A chat row's reference is its last assistant message and its prompt everything before; a prompt/completion
row's are its completion and prompt. A reply matches when it equals the reference after trimming
whitespace or, when both parse as JSON, when the parsed values are equal (key order and spacing do not
count). `score-holdout` writes the result with one record per row to the staging prefix.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_api.trainer_config import TrainerConfig
from finetune_trainer.checkpoints import latest_complete, restore
from finetune_trainer.data.rows import Row, read_jsonl
from finetune_trainer.methods import plain_messages
from finetune_trainer.models import ModelError, materialize
from finetune_trainer.storage import StorageError, Store, join

BATCH = 16


@dataclass(frozen=True)
class Example:
    prompt: list[dict[str, Any]] | str
    reference: str


def example(row: Row) -> Example:
    data = row.data
    if "messages" in data:
        messages = plain_messages(data["messages"])
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return Example(messages[:last], str(messages[last]["content"]))
    return Example(str(data["prompt"]), str(data["completion"]))


def matches(reply: str, reference: str) -> bool:
    if reply.strip() == reference.strip():
        return True
    try:
        return bool(json.loads(reply) == json.loads(reference))
    except ValueError:
        return False


def load(model_dir: Path, adapter_dir: Path | None) -> tuple[Any, Any]:
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir or model_dir)
    if adapter_dir is not None and not (adapter_dir / "adapter_config.json").exists():
        model_dir, adapter_dir = adapter_dir, None  # a full fine-tune: the checkpoint is the model
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    if adapter_dir is not None:
        from peft import PeftModel  # noqa: PLC0415

        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    return model, tokenizer


def generate(
    model: Any, tokenizer: Any, prompts: list[list[dict[str, Any]] | str], max_new_tokens: int
) -> list[str]:
    """Greedy replies, `BATCH` prompts at a time, left-padded."""
    import torch  # noqa: PLC0415

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    replies: list[str] = []
    for start in range(0, len(prompts), BATCH):
        texts = [
            p
            if isinstance(p, str)
            else tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
            for p in prompts[start : start + BATCH]
        ]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            model.device
        )
        with torch.no_grad():
            out = model.generate(
                **encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        new = out[:, encoded["input_ids"].shape[1] :]
        replies += [tokenizer.decode(seq, skip_special_tokens=True) for seq in new]
    return replies


def exact_match(model: Any, tokenizer: Any, rows: list[Row]) -> dict[str, Any]:
    examples = [example(row) for row in rows]
    longest = max(len(tokenizer(e.reference, add_special_tokens=False)["input_ids"]) for e in examples)
    started = time.monotonic()
    replies = generate(model, tokenizer, [e.prompt for e in examples], max_new_tokens=longest + 16)
    records: list[dict[str, Any]] = [
        {"line": row.line, "reference": e.reference, "reply": reply, "match": matches(reply, e.reference)}
        for row, e, reply in zip(rows, examples, replies, strict=True)
    ]
    hits = sum(1 for r in records if r["match"])
    return {
        "exact_match": hits / len(records),
        "rows": len(records),
        "seconds": round(time.monotonic() - started, 1),
        "records": records,
    }


def main(config: TrainerConfig, which: str, scratch: Path) -> int:
    """`score-holdout`: exact match of the base model (`which="base"`) or of the newest complete checkpoint
    (`"latest"`) on the holdout split; writes `holdout-<which>.json` beside the checkpoints."""
    store = Store.for_target(config.storage)
    if config.holdout is None:
        print("score-holdout: the job names no holdout dataset", file=sys.stderr)
        return 2
    try:
        dataset = read_jsonl(config.holdout.uri, store.read_bytes(config.holdout.uri), config.holdout.format)
        if dataset.problems or not dataset.rows:
            raise ValueError(f"holdout unreadable: {dataset.problems[0] if dataset.problems else 'no rows'}")
        model_dir = materialize(config.base_model, store, scratch)
        adapter = None
        if which == "latest":
            step = latest_complete(store, config.storage.staging_uri)
            if step is None:
                raise ValueError("no complete checkpoint to score")
            adapter = restore(store, config.storage.staging_uri, step, scratch / "scored")
        model, tokenizer = load(model_dir, adapter)
        result = exact_match(model, tokenizer, dataset.rows)
    except (StorageError, ModelError, ValueError) as err:
        print(f"score-holdout failed: {err}", file=sys.stderr)
        return 1
    store.write_json(join(config.storage.staging_uri, f"holdout-{which}.json"), result)
    print(f"holdout exact match ({which}): {result['exact_match']:.1%} of {result['rows']} rows")
    return 0
