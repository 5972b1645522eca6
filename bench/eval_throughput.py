"""Evaluation prompts/s of batched generation against one prompt at a time, on CPU (not a test: `make bench`).

Both runs use the same model (the bundled SmolLM2-135M-Instruct, float32), the same prompts (the chat
prompts of the bundled order-json holdout, then training rows: everything before the last assistant turn,
rendered with the model's chat template), the same `max_new_tokens`, greedy decoding, in the same process.

- baseline: `model.generate` on one prompt at a time, no padding, each stopping at its end-of-sequence token.
- batched: `finetune_trainer.evaluation.generation.generate` with `batchSize` 16 (prompts sorted by length,
  left-padded, each prompt run once with a KV cache, rows that have ended dropped from the batch every 16
  tokens, each row cut at its end-of-sequence token).

Each run is warmed up on one prompt first. Prompts/s is the aim (10x or better); new tokens/s (tokens of the
replies, up to their end) and the cores' worth of CPU time each run got are printed too: on a machine shared
with other work, per CPU-second varies less than per second. Greedy replies should be the same text in both
runs; the count of those that differ is printed (float32 rounding in padded batches can flip a near tie).

    python bench/eval_throughput.py [--prompts 96] [--max-new-tokens 48] [--batch-size 16] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "trainer_image")]

from finetune_api.v1alpha1.evalgate import Generation  # noqa: E402
from finetune_trainer import builtin  # noqa: E402
from finetune_trainer.data.rows import read_jsonl  # noqa: E402
from finetune_trainer.evaluation import generation  # noqa: E402
from finetune_trainer.evaluation.task import example  # noqa: E402

MODEL = "builtin://models/smollm2-135m-instruct"
DATA = ("builtin://datasets/order-json/holdout.jsonl", "builtin://datasets/order-json/training.jsonl")
AIM = 10.0


def prompts(count: int) -> list[list[dict[str, Any]] | str]:
    found: list[list[dict[str, Any]] | str] = []
    for uri in DATA:
        dataset = read_jsonl(uri, builtin.resolve(uri).read_bytes())
        if dataset.problems:
            raise ValueError(f"{uri}: {dataset.problems[0]}")
        found += [example(row).prompt for row in dataset.rows]
    if count > len(found):
        raise ValueError(f"--prompts {count}: the order-json holdout and training sets hold {len(found)}")
    return found[:count]


def one_at_a_time(model: Any, tokenizer: Any, batch: list[list[dict[str, Any]] | str], new: int) -> list[str]:
    """The baseline: plain `model.generate` per prompt, with the same decoding settings as the batched run."""
    import torch  # noqa: PLC0415
    from transformers import GenerationConfig  # noqa: PLC0415

    config = GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=new,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    replies = []
    for prompt in batch:
        text = generation.render(tokenizer, prompt)
        encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**encoded, generation_config=config)
        replies.append(tokenizer.decode(out[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True))
    return replies


def timed(run: Any) -> tuple[list[str], float, float]:
    clocks = time.perf_counter(), time.process_time()
    replies = run()
    return replies, time.perf_counter() - clocks[0], time.process_time() - clocks[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=96, help="prompts, holdout rows first")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="32 prompts")
    args = parser.parse_args()
    if args.quick:
        args.prompts = 32
    if args.prompts < 1 or args.max_new_tokens < 1 or args.batch_size < 1:
        parser.error("--prompts, --max-new-tokens and --batch-size must be at least 1")

    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    model_dir = builtin.resolve(MODEL)  # converted from GGUF once, then cached
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    batch = prompts(args.prompts)
    settings = Generation(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    lengths = [
        len(tokenizer(generation.render(tokenizer, p), add_special_tokens=False)["input_ids"]) for p in batch
    ]
    print(
        f"greedy generation on CPU: {MODEL} float32, {len(batch)} order-json prompts of {min(lengths)} to "
        f"{max(lengths)} tokens, max_new_tokens {args.max_new_tokens}, greedy, "
        f"torch threads {torch.get_num_threads()}"
    )
    one_at_a_time(model, tokenizer, batch[:1], args.max_new_tokens)  # warm-up
    generation.generate(model, tokenizer, batch[:1], settings)
    results = {
        "one at a time": timed(lambda: one_at_a_time(model, tokenizer, batch, args.max_new_tokens)),
        f"batched ({args.batch_size})": timed(lambda: generation.generate(model, tokenizer, batch, settings)),
    }
    print(f"\n{'run':<16} {'seconds':>8} {'cores':>5} {'prompts/s':>9} {'tokens/s':>8} {'prompts/CPU-s':>13}")
    rates = []
    for name, (replies, seconds, cpu) in results.items():
        tokens = sum(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in replies)
        rates.append((len(batch) / seconds, len(batch) / cpu))
        print(
            f"{name:<16} {seconds:8.2f} {cpu / seconds:5.2f} {rates[-1][0]:9.2f} {tokens / seconds:8.1f} "
            f"{rates[-1][1]:13.3f}"
        )
    (baseline, _, _), (batched, _, _) = results.values()
    differ = sum(a != b for a, b in zip(baseline, batched, strict=True))
    print(f"replies that differ between the runs: {differ} of {len(batch)}")
    ratio, cpu_ratio = rates[1][0] / rates[0][0], rates[1][1] / rates[0][1]
    verdict = "met" if ratio >= AIM else "NOT met"
    print(
        f"ratio batched/one at a time: {ratio:.2f}x (aim >= {AIM:.0f}x): {verdict}; "
        f"per CPU-second {cpu_ratio:.2f}x"
    )


if __name__ == "__main__":
    main()
