"""Near-duplicate detection against planted edits, per edit kind and row length (not a test: `make bench`).

1. Rows: chat conversations (a shared system prompt, a user turn, an assistant turn) of 10, 25, 50, 100,
   250, 500 and 1,000 words. Words are drawn from a 30,000-word vocabulary with Zipf-Mandelbrot
   frequencies (the commonest words real English function words, the rest made of syllables), in
   sentences of 3 to 16 words. A third of the rows share a user instruction from one of 40 templates of
   6 to 12 words and differ only in what fills it: those must stay distinct.
2. Plants: for every edit kind and length, copies of distinct rows with one small edit, placed after
   their original: a substituted, an inserted or a deleted word (one per 50 words, at least one); case,
   punctuation and whitespace changes; a sentence moved within its turn; a sentence of 5 to 12 words (at
   most half the row) appended.
3. Detection: the data gates' duplicate index (`finetune_trainer.data.duplicates`) on the rows read as
   the gates read them. A planted copy is found when it is matched to its original; any other match is a
   false positive. Recall per kind and length, precision per length (all findings on rows of that length).
4. Baseline, in the same run: the rule the gates used before (word 3-gram Jaccard >= 0.8 over the whole
   text with role labels), applied to each planted pair directly (its recall, with perfect candidates).
5. Speed: `--scale` rows (default 1,000,000) of 10 to 100 words with 2% planted copies, the duplicate
   index timed from texts to every row's match; baseline a plain datasketch pass (a MinHash per row fed a
   shingle at a time, then LSH) on a sample, scaled linearly.

    python bench/near_duplicates.py [--rows-per-length 3000] [--plants 100] [--scale 1000000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "trainer_image")]

from datasketch import MinHash, MinHashLSH  # noqa: E402

from finetune_trainer.data import duplicates  # noqa: E402
from finetune_trainer.data.rows import read_jsonl  # noqa: E402

LENGTHS = (10, 25, 50, 100, 250, 500, 1000)
KINDS = ("substitution", "insertion", "deletion", "punct/case/space", "sentence reorder", "appended sentence")
AIM_RECALL, AIM_PRECISION, AIM_SECONDS = 0.95, 0.99, 60.0
FUNCTION_WORDS = (  # noqa: SIM905 (the commonest English words, most frequent first)
    "the of and to a in is you that it he was for on are as with his they i at be this have from or one "
    "had by but not what all were we when your can said there use an each which she do how their if will "
    "up other about out many then them these so some her would make like him into time has look two more "
    "write go see number no way could people my than first water been call who oil its now find long down "
    "day did get come made may part"
).split()
SYSTEM = "You are a helpful assistant. Answer briefly and accurately."


class Words:
    """A Zipf-Mandelbrot vocabulary: rank r has weight 1 / (r + 2.7) ** 1.05."""

    def __init__(self, size: int = 30_000, seed: int = 11) -> None:
        rng = random.Random(seed)
        syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "st", "qu", "ng"]
        seen = set(FUNCTION_WORDS)
        self.vocabulary = list(FUNCTION_WORDS)
        while len(self.vocabulary) < size:
            word = "".join(rng.choice(syllables) for _ in range(rng.randint(1, 4)))
            if word not in seen:
                seen.add(word)
                self.vocabulary.append(word)
        weights = 1.0 / (np.arange(size) + 2.7) ** 1.05
        self.cumulative = np.cumsum(weights / weights.sum())
        self.rng = np.random.default_rng(seed)
        self.buffer: list[str] = []
        self.at = 0

    def draw(self, count: int) -> list[str]:
        """`count` words at random, from a buffer drawn a million at a time."""
        if self.at + count > len(self.buffer):
            fresh = np.searchsorted(self.cumulative, self.rng.random(max(count, 1_000_000)), side="right")
            self.buffer = self.buffer[self.at :] + [
                self.vocabulary[min(i, len(self.vocabulary) - 1)] for i in fresh
            ]
            self.at = 0
        self.at += count
        return self.buffer[self.at - count : self.at]


Sentence = list[str]


@dataclass
class Conversation:
    user: list[Sentence]
    assistant: list[Sentence]
    template: int | None = None  # the instruction template the user turn starts with

    def turns(self) -> list[list[Sentence]]:
        return [self.user, self.assistant]

    def movable(self) -> list[tuple[list[Sentence], int]]:
        """Each turn with the index of its first sentence that is not the template."""
        return [(self.user, int(self.template is not None)), (self.assistant, 0)]

    def words(self) -> int:
        return sum(len(s) for turn in self.turns() for s in turn)

    def row(self, render: Any = None) -> dict[str, Any]:
        text = render or _render
        return {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": " ".join(text(s) for s in self.user)},
                {"role": "assistant", "content": " ".join(text(s) for s in self.assistant)},
            ]
        }

    def copy(self) -> Conversation:
        return Conversation([list(s) for s in self.user], [list(s) for s in self.assistant], self.template)


def _render(sentence: Sentence) -> str:
    return " ".join([sentence[0].capitalize(), *sentence[1:]]) + "."


def _sentences(words: Words, rng: np.random.Generator, total: int) -> list[Sentence]:
    """Sentences of 3 to 16 words (shorter in short turns) adding up to `total` words; at least two."""
    longest = max(3, min(16, total // 2))
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(int(rng.integers(3, longest + 1)))
    sizes[-1] -= sum(sizes) - total
    if sizes[-1] < 2 and len(sizes) > 1:
        last = sizes.pop()
        sizes[-1] += last
    drawn = words.draw(total)
    out, at = [], 0
    for size in sizes:
        out.append(drawn[at : at + size])
        at += size
    return out


class Generator:
    def __init__(self, seed: int) -> None:
        self.words = Words()
        self.rng = np.random.default_rng(seed)
        template_rng = np.random.default_rng(seed + 1)
        self.templates = [self.words.draw(int(template_rng.integers(6, 13))) for _ in range(40)]

    def conversation(self, length: int) -> Conversation:
        """About `length` words, a third of the time after one of the instruction templates."""
        user_words = max(3, length * 2 // 5)
        templated = self.rng.random() < 1 / 3
        if templated:
            template = int(self.rng.integers(len(self.templates)))
            framing = self.templates[template]
            fill = _sentences(self.words, self.rng, max(3, user_words - len(framing) // 2))
            answer = _sentences(self.words, self.rng, max(4, length - sum(map(len, fill)) - len(framing)))
            return Conversation([list(framing), *fill], answer, template)
        user = _sentences(self.words, self.rng, user_words)
        return Conversation(user, _sentences(self.words, self.rng, max(4, length - user_words)))

    def edit(self, kind: str, original: Conversation) -> tuple[Conversation | None, Any]:
        """A copy of `original` with one edit of `kind` (None where the row has no room for it); also how
        to render it."""
        rng = self.rng
        copy = original.copy()
        edits = max(1, original.words() // 50)
        editable = [s for turn, first in copy.movable() for s in turn[first:]]
        if kind in ("substitution", "insertion", "deletion"):
            for _ in range(edits):
                sentence = editable[int(rng.integers(len(editable)))]
                at = int(rng.integers(len(sentence)))
                if kind == "substitution":
                    new = sentence[at]
                    while new == sentence[at]:
                        new = self.words.draw(1)[0]
                    sentence[at] = new
                elif kind == "insertion":
                    sentence.insert(at, self.words.draw(1)[0])
                elif len(sentence) > 2:
                    del sentence[at]
                else:
                    longest = max(editable, key=len)
                    del longest[int(rng.integers(len(longest)))]
            return copy, None
        if kind == "punct/case/space":

            def noisy(sentence: Sentence) -> str:
                out = []
                for word in sentence:
                    roll = rng.random()
                    out.append(word.upper() if roll < 0.1 else word.title() if roll < 0.2 else word)
                    if rng.random() < 0.1:
                        out[-1] += rng.choice([",", ";", " -", "!"])
                return "  ".join(out) + rng.choice(["", "...", "?", " ."])

            return copy, noisy
        if kind == "sentence reorder":
            turns = [(t, f) for t, f in copy.movable() if len(t) - f >= 2]
            if not turns:
                return None, None
            turn, first = turns[int(rng.integers(len(turns)))]
            at = int(rng.integers(first, len(turn)))
            moved = turn.pop(at)
            turn.insert(int(rng.choice([p for p in range(first, len(turn) + 1) if p != at])), moved)
            return copy, None
        if kind == "appended sentence":
            size = int(rng.integers(5, 13))
            size = min(size, max(2, original.words() // 2))
            copy.assistant.append(self.words.draw(size))
            return copy, None
        raise ValueError(kind)


OLD_TOKEN = re.compile(r"\w+")


def old_rule(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The rule before: word 3-gram Jaccard >= 0.8 of the turns with their role labels."""

    def grams(row: dict[str, Any]) -> set[str]:
        text = "\n".join(f"{m['role']}: {m['content']}" for m in row["messages"] if m["role"] != "system")
        tokens = OLD_TOKEN.findall(text.lower())
        return {" ".join(tokens[i : i + 3]) for i in range(max(1, len(tokens) - 2))}

    x, y = grams(a), grams(b)
    return len(x & y) / len(x | y) >= 0.8


def texts_of(rows: list[dict[str, Any]]) -> list[str]:
    data = b"\n".join(json.dumps(r).encode() for r in rows)
    return [row.similarity_text for row in read_jsonl("bench.jsonl", data).rows]


def detect(texts: list[str]) -> list[duplicates.Match | None]:
    framing = duplicates.Framing.estimate(texts)
    return duplicates.Index(duplicates.Sketches(texts, framing)).training_matches()


@dataclass
class Planted:
    rows: list[dict[str, Any]]
    distinct: int  # the first rows; the planted copies follow
    templated: int
    origin: dict[int, int]  # copy -> its original
    cell: dict[int, tuple[str, int]]  # copy -> (edit kind, length)
    length_of: list[int]
    old_hits: Counter[tuple[str, int]]  # copies the rule before would flag, per cell


def plant(args: argparse.Namespace) -> Planted:
    gen = Generator(args.seed)
    conversations = [gen.conversation(n) for n in LENGTHS for _ in range(args.rows_per_length)]
    length_of = [n for n in LENGTHS for _ in range(args.rows_per_length)]
    base = len(conversations)
    rows = [c.row() for c in conversations]
    origin: dict[int, int] = {}
    cell: dict[int, tuple[str, int]] = {}
    old_hits: Counter[tuple[str, int]] = Counter()
    picked: dict[int, list[int]] = defaultdict(list)
    for i in random.Random(args.seed).sample(range(base), base):
        picked[length_of[i]].append(i)
    for length in LENGTHS:
        pool = iter(picked[length])
        for kind in KINDS:
            for _ in range(args.plants):
                copy = None
                while copy is None:
                    original = next(pool)
                    copy, render = gen.edit(kind, conversations[original])
                origin[len(rows)] = original
                cell[len(rows)] = (kind, length)
                rows.append(copy.row(render))
                length_of.append(length)
                old_hits[(kind, length)] += old_rule(rows[original], rows[-1])
    order = list(range(base, len(rows)))
    random.Random(args.seed + 5).shuffle(order)  # copies after all originals, in no particular order
    return Planted(
        rows[:base] + [rows[i] for i in order],
        base,
        sum(c.template is not None for c in conversations),
        {base + k: origin[i] for k, i in enumerate(order)},
        {base + k: cell[i] for k, i in enumerate(order)},
        length_of[:base] + [length_of[i] for i in order],
        old_hits,
    )


def accuracy(args: argparse.Namespace) -> bool:
    planted = plant(args)
    rows, base, origin, cell, length_of = (
        planted.rows,
        planted.distinct,
        planted.origin,
        planted.cell,
        planted.length_of,
    )
    old_hits, templated = planted.old_hits, planted.templated
    texts = texts_of(rows)
    start = time.perf_counter()
    matches = detect(texts)
    took = time.perf_counter() - start
    found: Counter[tuple[str, int]] = Counter()
    true_at: Counter[int] = Counter()
    false_at: Counter[int] = Counter()
    false_examples: list[str] = []
    for i, match in enumerate(matches):
        if match is None:
            continue
        if origin.get(i) == match[1]:
            found[cell[i]] += 1
            true_at[length_of[i]] += 1
        else:
            false_at[length_of[i]] += 1
            if len(false_examples) < 3:
                false_examples.append(
                    f"    row {i} ({match[0]} of {match[1]}): {texts[i][:90]!r} ~ {texts[match[1]][:90]!r}"
                )
    print(
        f"{len(rows):,} rows ({base:,} distinct, {templated:,} of them after a shared template; "
        f"{len(rows) - base:,} planted copies), duplicate index {took:.1f} s"
    )
    print("\nrecall, gates now (before: word 3-gram Jaccard >= 0.8 with role labels, on the pair itself)")
    print(f"{'kind':<20}" + "".join(f"{n:>14}" for n in LENGTHS))
    met = True
    for kind in KINDS:
        line = f"{kind:<20}"
        for length in LENGTHS:
            recall = found[(kind, length)] / args.plants
            met &= recall >= AIM_RECALL
            line += f"{recall:>7.2f} ({old_hits[(kind, length)] / args.plants:.2f})"
        print(line)
    line = f"{'precision':<20}"
    for length in LENGTHS:
        flagged = true_at[length] + false_at[length]
        precision = true_at[length] / flagged if flagged else 1.0
        met &= precision >= AIM_PRECISION
        line += f"{precision:>7.3f} {false_at[length]:>3}fp "
    print(line)
    print("\n".join(false_examples))
    print(
        f"aim: recall >= {AIM_RECALL} on every kind and length at precision >= {AIM_PRECISION}: "
        f"{'met' if met else 'NOT met'}"
    )
    return met


def speed(args: argparse.Namespace) -> None:
    gen = Generator(args.seed + 100)
    rng = random.Random(args.seed)
    start = time.perf_counter()
    distinct = int(args.scale / 1.02)
    conversations = [gen.conversation(rng.randint(10, 100)) for _ in range(distinct)]
    rows = [c.row() for c in conversations]
    for _ in range(args.scale - distinct):
        original = conversations[rng.randrange(distinct)]
        copy, render = gen.edit(rng.choice(KINDS[:4]), original)
        assert copy is not None
        rows.append(copy.row(render))
    texts = texts_of(rows)
    words = sum(len(t.split()) for t in texts) / len(texts)
    print(
        f"\nspeed: {len(rows):,} rows of 10 to 100 words ({words:.0f} a row, made in "
        f"{time.perf_counter() - start:.0f} s), {os.cpu_count()} cores"
    )
    start = time.perf_counter()
    matches = detect(texts)
    took = time.perf_counter() - start
    flagged = sum(m is not None for m in matches)
    print(
        f"duplicate index, texts to matches: {took:.1f} s ({len(rows) / took:,.0f} rows/s), "
        f"{flagged:,} flagged ({args.scale - distinct:,} planted); aim under {AIM_SECONDS:.0f} s: "
        f"{'met' if took < AIM_SECONDS else 'NOT met'}"
    )
    sample = texts[: args.sample]
    start = time.perf_counter()
    lsh = MinHashLSH(threshold=0.5, num_perm=128)
    for i, text in enumerate(sample):
        tokens = duplicates.words(text)
        sketch = MinHash(num_perm=128)
        for k in range(max(1, len(tokens) - 2)):
            sketch.update(" ".join(tokens[k : k + 3]).encode())
        lsh.query(sketch)
        lsh.insert(str(i), sketch)
    naive = (time.perf_counter() - start) * len(texts) / len(sample)
    print(
        f"baseline, plain datasketch on {len(sample):,} rows scaled to {len(texts):,}: {naive:.0f} s; "
        f"ratio baseline / gates: {naive / took:.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows-per-length", type=int, default=3000)
    parser.add_argument("--plants", type=int, default=100, help="copies per edit kind and length")
    parser.add_argument("--scale", type=int, default=1_000_000, help="rows for the speed run (0: skip)")
    parser.add_argument("--sample", type=int, default=5_000, help="rows for the plain datasketch baseline")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument(
        "--quick", action="store_true", help="1,000 rows a length, 40 plants, 100,000 to time"
    )
    args = parser.parse_args()
    if args.quick:
        args.rows_per_length, args.plants, args.scale, args.sample = 1000, 40, 100_000, 2_000
    if args.rows_per_length < len(KINDS) * args.plants:
        parser.error("--rows-per-length must be at least 6 x --plants (each copy has its own original)")
    met = accuracy(args)
    if args.scale:
        speed(args)
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
