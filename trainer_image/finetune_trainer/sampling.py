"""Sampling RFT completions: every completion of a generation batch from one batched decode with a KV cache.

Owns turning prompt token ids into completion token ids, and nothing else: no reward, no loss, no logging.
TRL's transformers path left-pads the repeated prompts (each prompt `num_generations` times) and calls
`generate` once. This does the same decoding (TRL's `GenerationConfig`: temperature, top-p, top-k, min-p,
repetition penalty, its end-of-sequence ids) with less work per completion:

- Each distinct prompt is run through the model once; its KV cache is copied to each of its generations,
  instead of every copy of the prompt being run again.
- Decoding goes in chunks of `CHUNK` tokens. After a chunk, the rows that have ended leave the batch with
  their cache rows, so the rest decode in a smaller batch instead of carrying finished rows as padding to
  the end of the longest. Within a chunk, `generate` ends as soon as every row has.
- A completion ends with its first end-of-sequence token (kept, as TRL keeps it), or with the token that
  completes one of `stop_strings` (kept; nothing is appended), or at `max_new_tokens`. A stop string is
  matched in the decoded text, so it may span tokens; the grader sees the text up to and including the
  token that completed it.
- `sampling_weights` puts the model in eval mode (no dropout) while sampling, and merges a LoRA adapter
  into float32 base weights (one matrix product per layer instead of three), unmerged afterwards. Adapters
  over other dtypes stay unmerged: unmerging bf16 weights would not give back the same weights.

Sampling draws from torch's global generator, as `generate` does. It must not touch the optimizer, the
gradients or the adapter's own weights: the model leaves `sampling_weights` as it entered (up to float32
rounding of the base weights, one unit in the last place per merge at most).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList

CHUNK = 16  # tokens decoded between two compactions of the batch


@contextlib.contextmanager
def sampling_weights(model: Any) -> Iterator[None]:
    """Eval mode, and a LoRA adapter merged into float32 base weights, for the duration."""
    training = model.training
    merge = (
        hasattr(model, "merge_adapter")
        and all(p.dtype == torch.float32 for p in model.parameters())
        and not any(getattr(m, "merged", False) for m in model.modules())
    )
    model.eval()
    if merge:
        model.merge_adapter()
    try:
        yield
    finally:
        if merge:
            model.unmerge_adapter()
        model.train(training)


class Endings(StoppingCriteria):
    """Each row's completion so far, and whether it has ended (end-of-sequence id or a stop string)."""

    def __init__(
        self, completions: list[list[int]], eos: Sequence[int], stop_strings: Sequence[str], tokenizer: Any
    ) -> None:
        self.completions = completions
        self.done = [False] * len(completions)
        self.eos = set(eos)
        self.stop_strings = tuple(stop_strings)
        self.tokenizer = tokenizer
        # a character takes at most 4 byte-level tokens, so this tail holds any stop string that just ended
        self.tail = 4 * max((len(s) for s in self.stop_strings), default=0) + 1

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        for row, token in enumerate(input_ids[:, -1].tolist()):
            if not self.done[row]:
                self.completions[row].append(token)
                self.done[row] = token in self.eos or self.stopped(self.completions[row])
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)

    def stopped(self, tokens: list[int]) -> bool:
        if not self.stop_strings:
            return False
        text = self.tokenizer.decode(tokens[-self.tail :], skip_special_tokens=False)
        return any(stop in text for stop in self.stop_strings)


def sample(
    model: Any,
    prompts: Sequence[Sequence[int]],
    config: Any,
    *,
    eos: Sequence[int],
    pad: int,
    stop_strings: Sequence[str] = (),
    tokenizer: Any = None,
    chunk: int = CHUNK,
) -> list[list[int]]:
    """The completion token ids of each prompt (in order; repeated prompts are sampled independently).
    `config` is a transformers GenerationConfig with `max_new_tokens`; call under `torch.no_grad()`."""
    if stop_strings and tokenizer is None:
        raise ValueError("stop strings are matched in decoded text: pass the tokenizer")
    if any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token")
    device = next(model.parameters()).device
    distinct: dict[tuple[int, ...], int] = {}
    group = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts]
    width = max(len(p) for p in distinct)
    ids = torch.full((len(distinct), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(distinct):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    cache: Any = DynamicCache(config=model.config)
    if width > 1:  # all but the last prompt token: `generate` needs one uncached token to start from
        head = mask[:, :-1]
        positions = (head.cumsum(-1) - 1).clamp(min=0)  # as `generate` numbers left-padded rows
        model(
            input_ids=ids[:, :-1],
            attention_mask=head,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
    index = torch.tensor(group, device=device)
    cache.reorder_cache(index)
    ids, mask = ids[index], mask[index]

    completions: list[list[int]] = [[] for _ in prompts]
    rows = list(range(len(prompts)))  # batch row -> completion
    left = int(config.max_new_tokens)
    while rows and left > 0:
        step = copy.deepcopy(config)
        step.max_new_tokens = min(chunk, left)
        endings = Endings([completions[r] for r in rows], eos, stop_strings, tokenizer)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            past_key_values=cache,
            generation_config=step,
            stopping_criteria=StoppingCriteriaList([endings]),
        )
        made = out.shape[1] - ids.shape[1]
        left -= made
        keep = [b for b, done in enumerate(endings.done) if not done]
        if not keep or left <= 0:
            break
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], made)], dim=1)
        if len(keep) < len(rows):
            selected = torch.tensor(keep, device=device)
            out, mask = out[selected], mask[selected]
            cache.reorder_cache(selected)
            rows = [rows[b] for b in keep]
        ids = out
    return completions
