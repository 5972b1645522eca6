"""The quickstart's task: turn a sentence about an order into one JSON object, checked by exact match.

`python -m finetune_trainer.builtin.order_json` writes `datasets/order-json/{training,validation,holdout}
.jsonl` (deterministic; a test checks the committed files match). The splits share no (customer, item,
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

FOLDER = Path(__file__).parent / "datasets" / "order-json"
SIZES = {"training": 96, "validation": 16, "holdout": 48}
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


def render() -> dict[str, str]:
    return {
        f"{split}.jsonl": "".join(json.dumps(row) + "\n" for row in split_rows)
        for split, split_rows in rows().items()
    }


def main() -> int:
    FOLDER.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (FOLDER / name).write_text(text)
        print(f"wrote {FOLDER / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
