"""Batched generation: requests queue, one thread generates them together.

The generation thread takes the oldest waiting request and, within a short gather window, up to
`max_batch_size - 1` more with the same sampling settings (greedy, or one temperature), left-pads their
prompts (chat template, generation prompt) and runs one `generate` with the KV cache for the longest reply
any of them asks for. Each reply is then cut to its own request: its own token limit, the end-of-turn
token, and the first of its stop strings. `finish_reason` is "stop" when the reply ended (end of turn or a
stop string) and "length" when it ran into its limit.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

GATHER_SECONDS = 0.005


@dataclass(frozen=True)
class Request:
    messages: list[dict[str, Any]]
    max_tokens: int
    temperature: float = 0.0
    stop: tuple[str, ...] = ()

    @property
    def sampling(self) -> float:
        return round(self.temperature, 4)


@dataclass(frozen=True)
class Reply:
    text: str
    finish_reason: str  # stop | length
    prompt_tokens: int
    completion_tokens: int


@dataclass
class _Pending:
    request: Request
    future: Future[Reply] = field(default_factory=Future)


def cut(
    tokens: Sequence[int], text_of: Callable[[Sequence[int]], str], request: Request, eos: set[int]
) -> Reply:
    """One request's reply from the batch's generated tokens (pad and eos ids in `eos`)."""
    kept = list(tokens[: request.max_tokens])
    finish = "length"
    for index, token in enumerate(kept):
        if token in eos:
            kept, finish = kept[:index], "stop"
            break
    text = text_of(kept)
    hits = [text.index(s) for s in request.stop if s and s in text]
    if hits:
        text, finish = text[: min(hits)], "stop"
    return Reply(text, finish, 0, len(kept))


def gather(waiting: queue.Queue[_Pending], first: _Pending, limit: int, window: float) -> list[_Pending]:
    """`first` and up to `limit - 1` more requests with its sampling settings that arrive within `window`;
    the others go back in line, in order."""
    batch: list[_Pending] = [first]
    others: list[_Pending] = []
    deadline = time.monotonic() + window
    while len(batch) < limit:
        remaining = deadline - time.monotonic()
        try:
            pending = waiting.get(timeout=max(remaining, 0)) if remaining > 0 else waiting.get_nowait()
        except queue.Empty:
            break
        (batch if pending.request.sampling == first.request.sampling else others).append(pending)
    for pending in others:
        waiting.put(pending)
    return batch


class Generator:
    """The generation thread of one loaded model; `submit` returns a Future of the Reply."""

    def __init__(
        self, model: Any, tokenizer: Any, max_batch_size: int, observe_batch: Callable[[int], None]
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.observe_batch = observe_batch
        self.waiting: queue.Queue[_Pending] = queue.Queue()
        self.eos = {i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}
        self.thread = threading.Thread(target=self._run, name="generate", daemon=True)
        self.thread.start()

    def submit(self, request: Request) -> Future[Reply]:
        pending = _Pending(request)
        self.waiting.put(pending)
        return pending.future

    def prompt_tokens(self, messages: list[dict[str, Any]]) -> int:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return len(ids["input_ids"] if isinstance(ids, dict) else ids)

    def _run(self) -> None:
        while True:
            first = self.waiting.get()
            batch = gather(self.waiting, first, self.max_batch_size, GATHER_SECONDS)
            self.observe_batch(len(batch))
            try:
                replies = self._generate([p.request for p in batch])
            except Exception as err:  # one failed batch fails its requests, never the thread
                for pending in batch:
                    pending.future.set_exception(err)
                continue
            for pending, reply in zip(batch, replies, strict=True):
                pending.future.set_result(reply)

    def _generate(self, requests: list[Request]) -> list[Reply]:
        import torch  # noqa: PLC0415

        tok = self.tokenizer
        texts = [
            tok.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=False) for r in requests
        ]
        inputs = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        temperature = requests[0].temperature
        options: dict[str, Any] = {"do_sample": temperature > 0}
        if temperature > 0:
            options["temperature"] = temperature
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=max(r.max_tokens for r in requests),
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                **options,
            )
        width = inputs["input_ids"].shape[1]
        prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
        replies = []
        for row, request, prompt in zip(out, requests, prompt_lengths, strict=True):
            reply = cut(
                row[width:].tolist(), lambda ids: tok.decode(ids, skip_special_tokens=True), request, self.eos
            )
            replies.append(Reply(reply.text, reply.finish_reason, int(prompt), reply.completion_tokens))
        return replies
