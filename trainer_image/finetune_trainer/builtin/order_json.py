"""The quickstarts' task: turn a sentence about an order into one JSON object.

`python -m finetune_trainer.builtin.order_json` writes three datasets of the same orders, each with
`{training,validation,holdout}.jsonl` (deterministic; a test checks the committed files match):
- `order-json`: chat rows, the instruction as the system message and the JSON object as the reply (SFT,
  checked by exact match);
- `order-json-preferences`: preference rows for DPO, the sentence alone as the prompt, the JSON object
  preferred over a friendly sentence saying the same (a new answer style: the base model prefers the
  sentence), checked by preference accuracy;
- `order-json-rft`: RFT rows, the instruction and the sentence as the prompt, the order's fields as the
  reference (`item.customer`, `item.item`, `item.quantity`, `item.city`) for a grader that gives a
  quarter point per field right. Its training and holdout splits are shorter (`RFT_SIZES`, chosen by
  `rft_splits`): RFT samples each prompt several times, and a quickstart on a CPU has minutes, not hours.
 The splits share no (customer, item,
quantity, city) combination, no two sentences of one pattern share two of customer, item and city (they
would be near duplicates), and every sentence pattern appears in each split. The instruction is the
system message, so the data gates judge duplicates and leakage on the sentences and answers themselves.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

DATASETS = Path(__file__).parent / "datasets"
FOLDER = DATASETS / "order-json"
SIZES = {"training": 96, "validation": 16, "holdout": 48}
RFT_SIZES = {"training": 24, "holdout": 24}  # RFT samples every prompt several times
SYSTEM = (
    'Reply with only a JSON object with the keys "customer", "item", "quantity" (a number) and "city", '
    "describing the order in the user's message."
)
CUSTOMERS = [
    "Maria",
    "Ahmed",
    "Chen",
    "Olga",
    "Tomas",
    "Priya",
    "Lucas",
    "Amara",
    "Kenji",
    "Sofia",
    "Diego",
    "Ines",
    "Noah",
    "Leila",
    "Ivan",
    "Zoe",
    "Omar",
    "Hana",
    "Felix",
    "Nadia",
    "Raj",
    "Greta",
    "Malik",
    "Yara",
]
ITEMS = [
    "lamp",
    "chair",
    "desk",
    "mug",
    "kettle",
    "blanket",
    "pillow",
    "shelf",
    "clock",
    "mirror",
    "vase",
    "rug",
    "towel",
    "stool",
]
CITIES = [
    "Oslo",
    "Lima",
    "Paris",
    "Cairo",
    "Tokyo",
    "Quito",
    "Dakar",
    "Perth",
    "Riga",
    "Porto",
    "Hanoi",
    "Bern",
    "Accra",
    "Delhi",
]
PROSE = (
    "Sure! {customer} ordered {quantity} {item}s, and they will be shipped to {city}.",
    "Of course. That is an order of {quantity} {item}s for {customer}, going to {city}.",
    "Got it: {customer} would like {quantity} {item}s delivered to {city}.",
)
PATTERNS = (
    "{customer} wants {quantity} {item}s shipped to {city}.",
    "Please send {quantity} {item}s to {customer} in {city}.",
    "Order from {customer} ({city}): {quantity} x {item}.",
    "Ship {quantity} {item}s to {city} for {customer}.",
    "{customer} from {city} ordered {quantity} {item}s.",
    "New order: {item}, quantity {quantity}, for {customer}, delivery to {city}.",
)


def rows(seed: int = 7) -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(seed)
    seen: set[tuple[str, str, int, str]] = set()
    written: list[list[tuple[str, str, int, str]]] = [[] for _ in PATTERNS]
    splits: dict[str, list[dict[str, Any]]] = {}
    for split, size in SIZES.items():
        out: list[dict[str, Any]] = []
        while len(out) < size:
            order = (rng.choice(CUSTOMERS), rng.choice(ITEMS), rng.randint(2, 9), rng.choice(CITIES))
            pattern = len(out) % len(PATTERNS)
            if order in seen or _alike(order, written[pattern]):
                continue
            seen.add(order)
            written[pattern].append(order)
            customer, item, quantity, city = order
            values = {"customer": customer, "item": item, "quantity": quantity, "city": city}
            sentence = PATTERNS[pattern].format(**values)
            out.append(
                {
                    "messages": [
                        {"role": "system", "content": SYSTEM},
                        {"role": "user", "content": sentence},
                        {"role": "assistant", "content": json.dumps(values)},
                    ]
                }
            )
        splits[split] = out
    return splits


def _alike(order: tuple[str, str, int, str], earlier: list[tuple[str, str, int, str]]) -> bool:
    """Whether an earlier order of the same pattern shares two of customer, item and city with `order`:
    its sentence would differ in a word or two, a near duplicate for the data gates."""
    customer, item, _, city = order
    return any((customer == c) + (item == i) + (city == t) >= 2 for c, i, _, t in earlier)


def preference(row: dict[str, Any], k: int) -> dict[str, Any]:
    """The chat row as a DPO row: its JSON reply preferred over a sentence (one of `PROSE`) saying it."""
    _, user, reply = row["messages"]
    values = json.loads(reply["content"])
    prose = PROSE[k % len(PROSE)].format(**values)
    return {
        "input": {"messages": [user]},
        "preferred_output": [reply],
        "non_preferred_output": [{"role": "assistant", "content": prose}],
    }


def rft(row: dict[str, Any]) -> dict[str, Any]:
    """The chat row as an RFT row: the prompt, and the order's fields as the grader's reference."""
    system, user, reply = row["messages"]
    return {"messages": [system, user], **json.loads(reply["content"])}


def rft_splits(splits: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Each split's first rows (at most `RFT_SIZES`) whose sentence shares at most one of customer,
    item, quantity and city with a row of its pattern chosen before, in any split: without the JSON
    reply, the data gates would call two sentences that differ only in two names near duplicates (or, across
    splits, leakage)."""
    chosen: list[tuple[int, dict[str, Any]]] = []  # (pattern, the order's fields)
    out: dict[str, list[dict[str, Any]]] = {}
    for split, split_rows in splits.items():
        kept: list[dict[str, Any]] = []
        for n, row in enumerate(split_rows):
            if len(kept) == RFT_SIZES.get(split, len(split_rows)):
                break
            pattern, values = n % len(PATTERNS), json.loads(row["messages"][2]["content"])
            if not any(p == pattern and sum(values[f] == v[f] for f in values) >= 2 for p, v in chosen):
                chosen.append((pattern, values))
                kept.append(rft(row))
        out[split] = kept
    return out


def render() -> dict[str, str]:
    """{path under `DATASETS`: its text}."""
    splits = rows()
    out: dict[str, str] = {}
    for split, split_rows in splits.items():
        variants = {
            "order-json": split_rows,
            "order-json-preferences": [preference(r, k) for k, r in enumerate(split_rows)],
            "order-json-rft": rft_splits(splits)[split],
        }
        for name, written in variants.items():
            out[f"{name}/{split}.jsonl"] = "".join(json.dumps(r) + "\n" for r in written)
    return out


def main() -> int:
    for name, text in render().items():
        path = DATASETS / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
