"""Synthetic datasets for the trainer tests: distinct rows by construction, so that whatever a test plants
(duplicates, leakage, PII) is the only thing there to find."""

from __future__ import annotations

import json
import random
from typing import Any

_SYLLABLES = ["ka", "lo", "mi", "ren", "to", "sa", "vu", "pel", "dor", "qui", "ban", "zet", "fo", "ny", "gra"]
WORDS = sorted({a + b + c for a in _SYLLABLES for b in _SYLLABLES for c in ("", "n", "s", "t")})


def sentence(rng: random.Random, words: int = 14) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def chat_rows(count: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "messages": [
                {"role": "system", "content": "You answer support questions."},
                {"role": "user", "content": sentence(rng)},
                {"role": "assistant", "content": sentence(rng)},
            ]
        }
        for _ in range(count)
    ]


def preference_rows(count: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "input": {"messages": [{"role": "user", "content": sentence(rng)}]},
            "preferred_output": [{"role": "assistant", "content": sentence(rng)}],
            "non_preferred_output": [{"role": "assistant", "content": sentence(rng)}],
        }
        for _ in range(count)
    ]


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def near_copy(row: dict[str, Any]) -> dict[str, Any]:
    """The row with one word of its answer changed: a near duplicate, not an exact one."""
    copied = json.loads(json.dumps(row))
    words = copied["messages"][-1]["content"].split()
    words[len(words) // 2] = "changed"
    copied["messages"][-1]["content"] = " ".join(words)
    return copied
