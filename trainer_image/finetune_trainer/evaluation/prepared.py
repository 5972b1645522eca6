"""A suite's rows, read once for `evaluate`: prompts, references, the items graders read, and (vision jobs)
each row's images, plus what each model said on them.

Owns reading a suite's file (with its seeded `sampleSize` sample) and turning text rows into prompts
(`prompt_of`); vision rows are `evaluation.vision`'s to turn. Must not load models or score anything.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from finetune_api.v1alpha1.evalgate import Suite
from finetune_trainer.data.rows import Row, read_jsonl
from finetune_trainer.evaluation.generation import Prompt
from finetune_trainer.methods import plain_messages
from finetune_trainer.storage import Store

SAMPLE_SEED = 0


@dataclass
class Prepared:
    """A suite's rows as prompts, references and grader items, plus what each model said."""

    suite: Suite
    prompts: list[Prompt]
    references: list[str | None]
    items: list[dict[str, Any]]
    candidate: dict[int | None, list[Any]] = field(default_factory=dict)  # per seed: replies or losses
    baseline: list[Any] | None = None
    images: list[list[str]] = field(default_factory=list)  # per row, for vision jobs
    lines: list[int] = field(default_factory=list)  # each row's line in the suite's file
    baseline_error: str | None = None  # why the baseline could not be compared (NotComparableError)


class NotComparableError(ValueError):
    """The baseline cannot be scored on the suite's rows: its no-regression check fails with this reason,
    while the candidate is still scored against the threshold."""


def prompt_of(data: dict[str, Any]) -> tuple[Prompt, str | None, dict[str, Any]]:
    """(prompt, reference, item) of one suite row."""
    if "messages" in data:
        messages = plain_messages(data["messages"])
        item = {k: v for k, v in data.items() if k != "messages"}
        asked = [m for m in messages if m.get("role") == "user"]
        if asked:
            item.setdefault("prompt", str(asked[-1].get("content")))  # the question, for judges
        answers = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
        if answers and answers[-1] == len(messages) - 1:
            reference = str(messages[-1]["content"])
            item.setdefault("reference_answer", reference)
            return messages[:-1], reference, item
        return messages, item.get("reference_answer"), item
    if "prompt" in data:
        item = {k: v for k, v in data.items() if k not in ("prompt", "completion")}
        completion = data.get("completion")
        return str(data["prompt"]), None if completion is None else str(completion), item
    raise ValueError("a suite row needs messages or a prompt")


def suite_rows(suite: Suite, store: Store) -> list[Row]:
    """The suite's rows, or the `sampleSize` of them drawn with a fixed seed."""
    dataset = read_jsonl(suite.dataset.uri, store.read_bytes(suite.dataset.uri), suite.dataset.format)
    if dataset.problems:
        raise ValueError(f"{suite.dataset.uri}: {dataset.problems[0]}")
    rows = dataset.rows
    if not rows:
        raise ValueError(f"{suite.dataset.uri} has no rows")
    if suite.sample_size is not None and suite.sample_size < len(rows):
        picked = sorted(random.Random(SAMPLE_SEED).sample(range(len(rows)), suite.sample_size))
        rows = [rows[i] for i in picked]
    return rows


def text_rows(suite: Suite, rows: list[Row]) -> Prepared:
    parsed = [prompt_of(row.data) for row in rows]
    return Prepared(
        suite,
        [p for p, _, _ in parsed],
        [r for _, r, _ in parsed],
        [i for _, _, i in parsed],
        lines=[row.line for row in rows],
    )
