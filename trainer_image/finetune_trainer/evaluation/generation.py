"""Batched generation for evaluation, driven by an EvalGate suite's `Generation` settings.

Owns turning prompts into replies and nothing else: no metric, no dataset reading. Why it looks as it does:

- Prompts are tokenized once and sorted by token length (longest first) before batching, so a batch holds
  prompts of similar length and little of it is padding; replies come back in the caller's order.
- Left padding with an explicit attention mask: every row's last prompt token sits at the same position, so
  the new tokens of all rows are one slice. The caller's tokenizer is not modified (padding is done here).
- The decoding settings are exactly these: greedy when `temperature` is 0, else plain temperature sampling
  (top-k and top-p off). The model's own `generation_config` (a repetition penalty, say) is not applied, so
  a score does not depend on what a checkpoint happened to ship. Sampling draws from torch's generator
  seeded with `seed` inside a forked random state: the same seed gives the same replies for the same
  prompts and batch size, and the caller's random state is left as it was.
- Decoding is `finetune_trainer.sampling.sample`'s: a batch's prompts are run once with a KV cache, and
  the rows that have ended leave the batch every few tokens instead of decoding padding until the longest
  reply ends (`bench/eval_throughput.py` measures it against one prompt at a time).
- Each row stops at its end-of-sequence token (the model's `generation_config.eos_token_id`, one id or a
  list, else the tokenizer's); the reply is what came before it, decoded without special tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from finetune_api.v1alpha1.evalgate import Generation

Prompt = list[dict[str, Any]] | str


def render(tokenizer: Any, prompt: Prompt) -> str:
    """A plain string as it is; chat messages through the tokenizer's chat template, ready for the reply."""
    if isinstance(prompt, str):
        return prompt
    text: str = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return text


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in eos] if isinstance(eos, list | tuple) else [int(eos)]


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    settings: Generation,
    *,
    seed: int | None = None,
    stop_strings: Sequence[str] = (),
) -> list[str]:
    """One reply per prompt, in the order of `prompts` (see the module docstring for the rules). A reply
    also ends with the token that completes one of `stop_strings` (an RFT job's `rft.stopStrings`, so its
    holdout replies end where its training samples do), which it keeps."""
    if not prompts:
        return []
    texts = [render(tokenizer, p) for p in prompts]
    ids: list[list[int]] = tokenizer(texts, add_special_tokens=False)["input_ids"]
    empty = [i for i, row in enumerate(ids) if not row]
    if empty:
        raise ValueError(f"prompt {empty[0]} has no tokens; a reply needs something to follow")
    stops = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops[0] if stops else 0)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    replies: list[str] = [""] * len(ids)
    with seeded(model, seed if settings.temperature > 0 else None):
        for start in range(0, len(order), settings.batch_size):
            chunk = order[start : start + settings.batch_size]
            new = _batch(
                model,
                tokenizer,
                [ids[i] for i in chunk],
                settings,
                pad=pad,
                stops=stops,
                stop_strings=stop_strings,
            )
            for i, tokens in zip(chunk, new, strict=True):
                replies[i] = tokenizer.decode(tokens, skip_special_tokens=True)
    return replies


def _batch(
    model: Any,
    tokenizer: Any,
    rows: list[list[int]],
    settings: Generation,
    *,
    pad: int,
    stops: list[int],
    stop_strings: Sequence[str],
) -> list[list[int]]:
    """The new tokens of each row, cut before its first end-of-sequence token."""
    import torch  # noqa: PLC0415 (heavy; only generation needs it)

    from finetune_trainer.sampling import sample  # noqa: PLC0415

    with torch.inference_mode():
        config = decoding(settings, pad, stops)
        out = sample(model, rows, config, eos=stops, pad=pad, stop_strings=stop_strings, tokenizer=tokenizer)
    return new_tokens(out, stops)


def decoding(settings: Generation, pad: int, stops: list[int]) -> Any:
    """The GenerationConfig of `settings`: greedy at temperature 0, else plain temperature sampling."""
    from transformers import GenerationConfig  # noqa: PLC0415

    sampling = settings.temperature > 0
    config: dict[str, Any] = {
        "max_new_tokens": settings.max_new_tokens,
        "do_sample": sampling,
        "pad_token_id": pad,
        "eos_token_id": stops or None,
    }
    if sampling:
        config |= {"temperature": settings.temperature, "top_p": 1.0, "top_k": None}
    return GenerationConfig(**config)  # type: ignore[no-untyped-call]


def new_tokens(rows: list[list[int]], stops: list[int]) -> list[list[int]]:
    """Each row's generated tokens cut before its first end-of-sequence token."""
    replies = []
    for tokens in rows:
        cut = next((k for k, t in enumerate(tokens) if t in stops), len(tokens))
        replies.append(tokens[:cut])
    return replies


@contextlib.contextmanager
def seeded(model: Any, seed: int | None) -> Iterator[None]:
    """Sampling under `seed` in a forked random state (nothing to do without a seed)."""
    if seed is None:
        yield
        return
    import torch  # noqa: PLC0415

    device = getattr(model, "device", None)
    devices = [device.index or 0] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
