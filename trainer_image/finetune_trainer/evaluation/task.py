"""Task metrics on the holdout split, one per kind of data, for the base model or a checkpoint.

- chat and prompt/completion rows: `exact_match`. Batched greedy generation; a chat row's reference is its
  last assistant message and its prompt everything before; a prompt/completion row's are its completion and
  prompt. A reply matches when it equals the reference after trimming whitespace or, when both parse as
  JSON, when the parsed values are equal (key order and spacing do not count).
- preference rows (DPO): `preference_accuracy`, the share of pairs where the model gives the preferred
  answer a higher log-probability than the other one (the same quantity DPO trains).
- RFT jobs (RFT or chat rows): `reward`, the mean score the job's grader gives the greedy replies, each
  ending where a training sample would (end-of-sequence, `rft.stopStrings`, `maxCompletionTokens`).

`score-holdout` writes `{metric, score, rows, seconds, records}` (one record per row) to the staging prefix.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_api.run_layout import HoldoutModel
from finetune_api.trainer_config import TrainContract
from finetune_api.v1alpha1.common import DatasetFormat
from finetune_api.v1alpha1.evalgate import Generation
from finetune_api.v1alpha1.finetunejob import Method
from finetune_trainer.checkpoints import latest_complete, restore
from finetune_trainer.data.rows import Row, read_jsonl
from finetune_trainer.evaluation.generation import generate
from finetune_trainer.methods import plain_messages
from finetune_trainer.models import ModelError, materialize
from finetune_trainer.storage import StorageError, Store

BATCH = 16  # prompts per generation batch


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


def exact_match(model: Any, tokenizer: Any, rows: list[Row]) -> dict[str, Any]:
    examples = [example(row) for row in rows]
    longest = max(len(tokenizer(e.reference, add_special_tokens=False)["input_ids"]) for e in examples)
    settings = Generation(max_new_tokens=longest + 16, batch_size=BATCH)
    replies = generate(model, tokenizer, [e.prompt for e in examples], settings)
    records: list[dict[str, Any]] = [
        {"line": row.line, "reference": e.reference, "reply": reply, "match": matches(reply, e.reference)}
        for row, e, reply in zip(rows, examples, replies, strict=True)
    ]
    return {"metric": "exact_match", "score": sum(1 for r in records if r["match"]) / len(records)} | {
        "records": records
    }


def answer_log_prob(
    model: Any, tokenizer: Any, prompt: list[dict[str, Any]], answer: list[dict[str, Any]]
) -> float:
    """Sum of the answer's token log-probabilities after the prompt, under the model's chat template."""
    return answer_log_probs(model, tokenizer, [(prompt, answer)])[0]


def answer_log_probs(
    model: Any, tokenizer: Any, pairs: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]
) -> list[float]:
    """`answer_log_prob` of each (prompt, answer), in order: batches of `BATCH` sequences of similar
    length, right-padded (a causal model's positions before the padding do not see it), with the vocabulary
    projection only from the batch's earliest answer token on (the prompts are most of the tokens)."""
    import torch  # noqa: PLC0415

    encoded: list[tuple[list[int], int]] = []
    for prompt, answer in pairs:
        context = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
        ids = tokenizer(full, add_special_tokens=False).input_ids
        start = len(tokenizer(context, add_special_tokens=False).input_ids)
        if not 0 < start < len(ids):
            raise ValueError(f"answer {len(encoded)} has no tokens after its prompt")
        encoded.append((ids, start))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    sums = [0.0] * len(encoded)
    for at in range(0, len(order), BATCH):
        chunk = order[at : at + BATCH]
        width = max(len(encoded[i][0]) for i in chunk)
        first = min(encoded[i][1] for i in chunk) - 1  # the position that predicts the earliest answer token
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(chunk):
            tokens = encoded[i][0]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        ids, mask = ids.to(model.device), mask.to(model.device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=width - first).logits
        scores = logits[:, :-1].float().log_softmax(-1)  # positions first .. width-2
        picked = scores.gather(-1, ids[:, first + 1 :, None])[..., 0].cpu()
        for row, i in enumerate(chunk):
            tokens, start = encoded[i]
            sums[i] = float(picked[row, start - 1 - first : len(tokens) - 1 - first].sum())
    return sums


def preference_accuracy(model: Any, tokenizer: Any, rows: list[Row]) -> dict[str, Any]:
    pairs = []
    for row in rows:
        prompt = plain_messages(row.data["input"]["messages"])
        pairs.append((prompt, plain_messages(row.data["preferred_output"])))
        pairs.append((prompt, plain_messages(row.data["non_preferred_output"])))
    scores = answer_log_probs(model, tokenizer, pairs)
    records = []
    for n, row in enumerate(rows):
        chosen, rejected = scores[2 * n], scores[2 * n + 1]
        records.append({"line": row.line, "margin": chosen - rejected, "match": chosen > rejected})
    return {
        "metric": "preference_accuracy",
        "score": sum(1 for r in records if r["match"]) / len(records),
    } | {"records": records}


def reward(model: Any, tokenizer: Any, rows: list[Row], config: TrainContract) -> dict[str, Any]:
    from finetune_trainer.graders import compile_grader, sample_from_text  # noqa: PLC0415
    from finetune_trainer.methods.rft import prompt_and_item  # noqa: PLC0415

    if config.rft is None:
        raise ValueError("RFT holdout rows are scored by the job's grader, and the job has no rft settings")
    prepared = [prompt_and_item(row.data) for row in rows]
    settings = Generation(max_new_tokens=config.rft.max_completion_tokens, batch_size=BATCH)
    replies = generate(
        model, tokenizer, [p["prompt"] for p in prepared], settings, stop_strings=config.rft.stop_strings
    )
    with compile_grader(config.rft.grader) as grader:
        results = grader.grade(
            [sample_from_text(r) for r in replies], [json.loads(p["item_json"]) for p in prepared]
        )
    records = [
        {"line": row.line, "reply": reply, "score": r.score, "passed": r.passed, "error": r.error}
        for row, reply, r in zip(rows, replies, results, strict=True)
    ]
    return {"metric": "reward", "score": sum(r.score for r in results) / len(results), "records": records}


def evaluate(
    model: Any, tokenizer: Any, rows: list[Row], fmt: DatasetFormat, config: TrainContract
) -> dict[str, Any]:
    """The holdout metric for the job's method and rows of format `fmt` (see the module docstring)."""
    started = time.monotonic()
    if config.method == Method.RFT:
        result = reward(model, tokenizer, rows, config)
    elif fmt == DatasetFormat.PREFERENCE:
        result = preference_accuracy(model, tokenizer, rows)
    elif fmt in (DatasetFormat.CHAT, DatasetFormat.PROMPT_COMPLETION):
        result = exact_match(model, tokenizer, rows)
    else:
        raise ValueError(f"score-holdout has no metric for {fmt} rows of method {config.method}")
    return result | {"rows": len(rows), "seconds": round(time.monotonic() - started, 1)}


def main(config: TrainContract, which: HoldoutModel, scratch: Path) -> int:
    """`score-holdout`: the holdout metric of the base model (`which="base"`) or of the newest complete
    checkpoint (`"latest"`); writes `holdout-<which>.json` beside the checkpoints."""
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
            step = latest_complete(store, config.layout)
            if step is None:
                raise ValueError("no complete checkpoint to score")
            adapter = restore(store, config.layout, step, scratch / "scored")
        model, tokenizer = load(model_dir, adapter)
        result = evaluate(model, tokenizer, dataset.rows, dataset.format, config)
    except (StorageError, ModelError, ValueError) as err:
        print(f"score-holdout failed: {err}", file=sys.stderr)
        return 1
    store.write_json(config.layout.holdout_score(which), result)
    print(f"holdout {result['metric']} ({which}): {result['score']:.3g} over {result['rows']} rows")
    return 0
