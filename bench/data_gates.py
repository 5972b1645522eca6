"""The data gates on 100,000 chat rows with planted problems (not a test: `make bench`).

1. Data: support conversations of 40 to 80 words from templated sentences over word lists (deterministic
   for a seed), with planted exact duplicates (2%; a third differ only in case and spacing), near
   duplicates (2%; one to three words changed, word 3-gram Jaccard >= 0.8 checked here), PII in 1% (an
   email, a phone number or a Luhn-valid card) and a 5,000-row validation split of which 1% repeats
   training rows (half exact, half near). A clean control set (other seed, nothing planted) counts false
   positives on data where there is nothing to find.
2. Gates: `read_jsonl` on the bytes and `gates.run` with the default `DataGates`, timed apart; detection
   rates are detected / planted per kind, read from every finding the gates note (the report keeps five).
3. Baseline, measured in the same run: exact pairwise Jaccard over every pair of a 2,000-row subsample,
   extrapolated to all rows (n^2 pairs); and a plain datasketch use (a MinHash built per row with its own
   permutations, fed shingle by shingle with `update`, then LSH), timed on a subsample and extrapolated
   linearly. The brute force also checks the gates' recall on its subsample.

    python bench/data_gates.py [--rows 100000] [--validation 5000] [--control 20000] [--quick]
                               [--profile gates.prof]
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import json
import pstats
import random
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "trainer_image")]

from datasketch import MinHash, MinHashLSH  # noqa: E402

from finetune_api.v1alpha1.finetunejob import DataGates  # noqa: E402
from finetune_trainer.data import gates  # noqa: E402
from finetune_trainer.data.rows import Dataset, read_jsonl  # noqa: E402

AIM_SECONDS = 30.0


def words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


SYSTEM = "You are the support assistant of Northwind Appliances. Be brief and friendly."
PRODUCTS = words(
    "kettle blender toaster router printer headset monitor keyboard camera speaker heater vacuum "
    "scooter tablet charger thermostat doorbell projector dishwasher microwave smartwatch drone lamp "
    "fan purifier humidifier modem laptop mixer fridge"
)
PARTS = words(
    "battery cable display lid filter button hinge remote antenna sensor port grille base strap "
    "cartridge motor switch adapter light wheel nozzle tray cover plug"
)
PROBLEMS = (
    "was cracked",
    "would not turn on",
    "kept restarting",
    "made a loud rattling noise",
    "smelled of burnt plastic",
    "got very hot",
    "lost all its settings",
    "showed error code {code}",
    "drained in an hour",
    "dropped the wifi every few minutes",
    "arrived without the {part}",
    "was the wrong colour",
    "stopped after the last update",
    "would not pair with my phone",
    "leaked water onto the counter",
    "flickered at night",
)
ADJECTIVES = words("black white silver red blue green compact large portable wireless refurbished premium")
ACTIONS = words("reset update clean replace pair register unlock calibrate return charge mount connect")
GERUNDS = words("working charging responding connecting heating spinning blinking beeping saving printing")
NAMES = words("Maria Ahmed Chen Olga Tomas Priya Lucas Amara Kenji Sofia Diego Ines Noah Leila Ivan Zoe")
CITIES = words("Oslo Lima Paris Cairo Tokyo Quito Dakar Perth Riga Porto Hanoi Bern Accra Delhi Leeds Lyon")
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
STORES = ["online", "downtown", "airport", "outlet", "mall"]
ROLES = ["technician", "specialist", "supervisor", "courier", "engineer"]
WHEN = (
    "tomorrow morning",
    "later today",
    "within two working days",
    "on {day} afternoon",
    "before the weekend",
    "early next week",
)
UNITS = ["days", "weeks", "hours", "months"]
SWAPS = sorted({*PRODUCTS, *PARTS, *ADJECTIVES, *ACTIONS, *GERUNDS, *NAMES, *CITIES})
USER = (
    "I bought a {adj} {product} from your {store} store on {day} and it {problem}.",
    "My {product} stopped {gerund} after {n} {unit}.",
    "Can you tell me how to {action} the {part} on my {product}?",
    "The {part} keeps {gerund} whenever I try to {action} it.",
    "I have been a customer since {year} and this is the first time a {product} {problem}.",
    "My name is {name} and I live in {city}.",
    "Is there a way to {action} the {product} without removing the {part}?",
    "I tried to {action} it {n} times but nothing changed.",
    "The manual says to {action} the {part} but my model has no {part2}.",
    "Order {order} was supposed to arrive on {day}.",
    "My {adj} {product} {problem} and the {part} is loose.",
    "Should I send the {product} back or wait for a {role}?",
    "A friend in {city} has the same {product} and hers {problem} too.",
    "I need it working before {day} because I travel to {city}.",
)
ASSISTANT = (
    "Sorry to hear that your {product} {problem}.",
    "Please {action} the {part} and wait {n} minutes before {gerund} it again.",
    "I have opened ticket {order} and a {role} from our {city} team will call you {when}.",
    "If the {part} still fails we will send a {adj} replacement {product} at no cost.",
    "Your {product} is under warranty until {year}, so the repair is free.",
    "Hold the {part} button for {n} seconds to {action} the {product}.",
    "Thanks {name}, I can see order {order} in our system.",
    "Most {product} faults like this come from the {part}, which we can {action} remotely.",
    "You can also bring it to our {store} store in {city} on {day}.",
    "Let me know if the {part} keeps {gerund} after that.",
    "A {role} will check the {part2} and the {part} together.",
    "We usually {action} the {product} first, which takes about {n} minutes.",
)
EMAIL_DOMAINS = ["example.com", "mailbox.org", "post.example.net", "inbox.example.co.uk"]
PII_KINDS = ("email", "phone", "credit_card")
TOKEN = re.compile(r"\w+")


# -- rows -----------------------------------------------------------------------------------------------


def _fill(rng: random.Random, template: str) -> str:
    values = {
        "product": rng.choice(PRODUCTS),
        "part": rng.choice(PARTS),
        "part2": rng.choice(PARTS),
        "adj": rng.choice(ADJECTIVES),
        "action": rng.choice(ACTIONS),
        "gerund": rng.choice(GERUNDS),
        "name": rng.choice(NAMES),
        "city": rng.choice(CITIES),
        "day": rng.choice(DAYS),
        "store": rng.choice(STORES),
        "role": rng.choice(ROLES),
        "unit": rng.choice(UNITS),
        "n": rng.randint(2, 30),
        "year": rng.randint(2015, 2026),
        "order": f"#{rng.randint(10000, 99999)}",
        "code": f"E{rng.randint(10, 99)}",
    }
    values["problem"] = rng.choice(PROBLEMS).format(**values)
    values["when"] = rng.choice(WHEN).format(**values)
    return template.format(**values)


def chat_row(rng: random.Random) -> dict[str, Any]:
    """One conversation of 40 to 80 words (a sentence more at most), user half first."""
    target = rng.randint(40, 80)
    user: list[str] = []
    answer: list[str] = []
    words = 0
    while words < target // 2:
        user.append(_fill(rng, rng.choice(USER)))
        words += len(user[-1].split())
    while words < target:
        answer.append(_fill(rng, rng.choice(ASSISTANT)))
        words += len(answer[-1].split())
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": " ".join(user)},
            {"role": "assistant", "content": " ".join(answer)},
        ]
    }


def shingles(row: dict[str, Any]) -> frozenset[str]:
    """Word 3-grams of what makes the row itself (user and assistant turns, lower-cased words)."""
    text = "\n".join(f"{m['role']}: {m['content']}" for m in row["messages"] if m["role"] != "system")
    tokens = TOKEN.findall(text.lower())
    return frozenset(" ".join(tokens[i : i + 3]) for i in range(max(1, len(tokens) - 2)))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b)


def exact_copy(rng: random.Random, row: dict[str, Any]) -> dict[str, Any]:
    """The row as is, or (one time in three) with different case and spacing: equal once normalised."""
    copied: dict[str, Any] = json.loads(json.dumps(row))
    if rng.random() < 1 / 3:
        user = copied["messages"][1]
        user["content"] = "  " + user["content"].upper().replace(" ", "  ")
    return copied


def near_copy(rng: random.Random, row: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """The row with one to three words of its turns replaced, keeping word 3-gram Jaccard >= 0.8."""
    original = shingles(row)
    for changes in range(rng.randint(1, 3), 0, -1):
        copied: dict[str, Any] = json.loads(json.dumps(row))
        for _ in range(changes):
            message = copied["messages"][rng.choice((1, 2))]
            words = message["content"].split(" ")
            at = rng.randrange(len(words))
            core = words[at].rstrip(".,?!")
            choices = [w for w in SWAPS if w.lower() != core.lower()]
            words[at] = rng.choice(choices) + words[at][len(core) :]
            message["content"] = " ".join(words)
        similarity = jaccard(original, shingles(copied))
        if 0.8 <= similarity < 1.0:
            return copied, similarity
    raise ValueError("a one-word change left Jaccard below 0.8: rows are too short for this benchmark")


def card_number(rng: random.Random) -> str:
    digits = [rng.randint(0, 9) for _ in range(15)]
    digits[0] = rng.choice((4, 5))
    total = 0
    for i, d in enumerate(reversed(digits)):  # the check digit will sit at the right: double from here
        total += (d * 2 - 9 if d > 4 else d * 2) if i % 2 == 0 else d
    number = "".join(map(str, digits)) + str((10 - total % 10) % 10)
    return " ".join(number[i : i + 4] for i in range(0, 16, 4))


def pii_sentence(rng: random.Random, kind: str) -> str:
    name = rng.choice(NAMES).lower()
    if kind == "email":
        return f"You can reach me at {name}.{rng.randint(1, 999)}@{rng.choice(EMAIL_DOMAINS)} any time."
    if kind == "phone":
        number = rng.choice(
            (
                f"+1 {rng.randint(200, 989)} 555 {rng.randint(1000, 9999)}",
                f"+44 20 {rng.randint(7000, 7999)} {rng.randint(1000, 9999)}",
                f"({rng.randint(200, 989)}) {rng.randint(200, 989)}-{rng.randint(1000, 9999)}",
            )
        )
        return f"Call me back on {number} please."
    return f"I paid with the card {card_number(rng)} if that helps."


@dataclass
class Planted:
    """Where each planted problem is, by split and 1-based line (as the gates name rows)."""

    kinds: dict[tuple[str, int], str] = field(default_factory=dict)  # (split, line) -> kind
    near_jaccard: list[float] = field(default_factory=list)

    def count(self) -> Counter[str]:
        return Counter(self.kinds.values())


def planted_splits(
    rows: int, validation: int, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Planted]:
    """Training and validation rows with 2% exact and 2% near duplicates, 1% PII, 1% leakage."""
    rng = random.Random(seed)
    planted = Planted()
    exact, near, with_pii = rows // 50, rows // 50, rows // 100
    order = ["clean"] * (rows - exact - near - with_pii) + ["exact"] * exact + ["near"] * near
    order += [PII_KINDS[i % len(PII_KINDS)] for i in range(with_pii)]
    head, tail = order[:100], order[100:]  # the first rows are clean: every copy has an earlier source
    rng.shuffle(tail)
    training: list[dict[str, Any]] = []
    clean: list[int] = []
    for index, kind in enumerate(["clean"] * len(head) + tail):
        if kind == "clean":
            clean.append(index)
            training.append(chat_row(rng))
            continue
        if kind == "exact":
            training.append(exact_copy(rng, training[rng.choice(clean)]))
        elif kind == "near":
            copied, similarity = near_copy(rng, training[rng.choice(clean)])
            training.append(copied)
            planted.near_jaccard.append(similarity)
        else:
            row = chat_row(rng)
            row["messages"][1]["content"] += " " + pii_sentence(rng, kind)
            training.append(row)
        planted.kinds["training", index + 1] = kind
    held = [chat_row(random.Random(seed * 1_000_003 + 1 + i)) for i in range(validation)]
    leaks = rng.sample(range(validation), validation // 100)
    for n, at in enumerate(leaks):
        source = training[rng.choice(clean)]
        if n % 2:
            held[at], similarity = near_copy(rng, source)
            planted.near_jaccard.append(similarity)
        else:
            held[at] = exact_copy(rng, source)
        planted.kinds["validation", at + 1] = "leak near" if n % 2 else "leak exact"
    return training, held, planted


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


# -- the gates, timed, and what they found ----------------------------------------------------------------


@dataclass
class Findings:
    """Every finding the gates note, by (split, line): duplicate/leakage kinds and PII kinds."""

    repeats: dict[tuple[str, int], str] = field(default_factory=dict)
    pii: dict[tuple[str, int], set[str]] = field(default_factory=lambda: defaultdict(set))


@contextmanager
def recording(files: dict[str, str]) -> Iterator[Findings]:
    """Note every example the gates give, not only the five the report keeps."""
    findings = Findings()
    split_of = {name: split for split, name in files.items()}
    noted = gates._Findings.example

    def note(self: Any, kind: str, text: str) -> None:
        where, _, what = text.partition(" ")
        file, _, line = where.rpartition(":")
        key = (split_of[file], int(line))
        if kind == "pii":
            findings.pii[key].add(what.split(" ")[0])
        else:
            findings.repeats[key] = f"{kind} {what.split(' ')[0]}"
        noted(self, kind, text)

    with mock.patch.object(gates._Findings, "example", note):
        yield findings


@dataclass
class Timed:
    parse_s: float
    gates_s: float
    outcome: gates.Outcome
    findings: Findings


def run_gates(data: dict[str, bytes], profile: str | None = None) -> Timed:
    files = {split: f"{split}.jsonl" for split in data}
    start = time.perf_counter()
    splits: dict[str, Dataset] = {split: read_jsonl(files[split], content) for split, content in data.items()}
    parsed = time.perf_counter()
    profiler = cProfile.Profile() if profile else None
    with recording(files) as findings:
        if profiler is not None:
            profiler.enable()
        outcome = gates.run(splits, DataGates())
        if profiler is not None:
            profiler.disable()
    done = time.perf_counter()
    if profiler is not None and profile:
        profiler.dump_stats(profile)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(18)
    return Timed(parsed - start, done - parsed, outcome, findings)


def detection(planted: Planted, findings: Findings) -> tuple[dict[str, tuple[int, int]], Counter[str]]:
    """Per planted kind (planted, detected), and false positives by check."""
    expected = {
        "exact": "duplicate exact",
        "near": "duplicate near",
        "leak exact": "leakage exact",
        "leak near": "leakage near",
    }
    rates: dict[str, tuple[int, int]] = {}
    for kind, planted_count in sorted(planted.count().items()):
        lines = [key for key, k in planted.kinds.items() if k == kind]
        if kind in expected:
            hit = sum(findings.repeats.get(key) == expected[kind] for key in lines)
        else:
            hit = sum(kind in findings.pii.get(key, set()) for key in lines)
        rates[kind] = (planted_count, hit)
    false: Counter[str] = Counter()
    for key, what in findings.repeats.items():
        if key not in planted.kinds:
            false[what.split(" ")[0]] += 1
    for key, kinds in findings.pii.items():
        false["pii"] += len(kinds - {planted.kinds.get(key, "")})
    return rates, false


# -- baselines ----------------------------------------------------------------------------------------


def brute_force(rows: list[dict[str, Any]]) -> tuple[float, float, int]:
    """(seconds to shingle, seconds for all pairs, rows with an earlier row at Jaccard >= 0.8)."""
    start = time.perf_counter()
    sets = [shingles(r) for r in rows]
    shingled = time.perf_counter()
    flagged = set()
    for (_, a), (j, b) in itertools.combinations(enumerate(sets), 2):
        common = len(a & b)
        if common / (len(a) + len(b) - common) >= 0.8:
            flagged.add(j)
    return shingled - start, time.perf_counter() - shingled, len(flagged)


BASELINE_THRESHOLD, BASELINE_PERMUTATIONS = 0.5, 128  # datasketch's LSH as commonly set up for 3-grams


def naive_minhash(rows: list[dict[str, Any]]) -> tuple[float, int]:
    """(seconds, rows flagged) for a plain datasketch pass: a fresh MinHash per row, one `update` per
    shingle, LSH query and insert, the exact Jaccard of each candidate."""
    start = time.perf_counter()
    lsh = MinHashLSH(threshold=BASELINE_THRESHOLD, num_perm=BASELINE_PERMUTATIONS)
    sets: list[frozenset[str]] = []
    flagged = 0
    for i, row in enumerate(rows):
        sets.append(shingles(row))
        m = MinHash(num_perm=BASELINE_PERMUTATIONS, seed=1)
        for s in sets[-1]:
            m.update(s.encode())
        found = (jaccard(sets[-1], sets[j]) for j in lsh.query(m))
        flagged += any(j >= 0.8 for j in found)
        lsh.insert(i, m)
    return time.perf_counter() - start, flagged


# -- the run ------------------------------------------------------------------------------------------


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="training rows, plants included")
    parser.add_argument("--validation", type=int, default=5_000, help="validation rows, 1%% leaked")
    parser.add_argument("--control", type=int, default=20_000, help="clean control rows (0: skip)")
    parser.add_argument("--pairs-sample", type=int, default=2_000, help="rows for the brute-force pairs")
    parser.add_argument("--minhash-sample", type=int, default=5_000, help="rows for the plain MinHash")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="20,000 rows, smaller samples")
    parser.add_argument("--profile", help="write a cProfile of gates.run here and print its top")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.validation, args.control = 20_000, 1_000, 5_000
        args.pairs_sample, args.minhash_sample = 1_000, 2_000
    if args.rows < 1_000 or args.validation < 100:
        parser.error("--rows must be at least 1,000 and --validation at least 100 (1% of it leaks)")
    if not 2 <= args.pairs_sample <= args.rows or not 1 <= args.minhash_sample <= args.rows:
        parser.error("--pairs-sample must be in [2, --rows] and --minhash-sample in [1, --rows]")
    return args


def print_detection(timed: Timed, planted: Planted) -> None:
    rates, false = detection(planted, timed.findings)
    print(f"\n{'planted':<24} {'planted':>8} {'detected':>9} {'rate':>7}")
    for kind, (count, hit) in rates.items():
        print(f"{kind:<24} {count:8,} {hit:9,} {hit / count:7.1%}")
    near = planted.near_jaccard
    print(f"near copies' word 3-gram Jaccard: min {min(near):.3f}, mean {sum(near) / len(near):.3f}")
    report = timed.outcome.report
    print(
        f"report: duplicate rate {report.duplicate_rate:.2%}, leakage rate {report.leakage_rate:.2%}, "
        f"PII {report.pii_findings}"
    )
    print(
        f"false positives (findings on rows with nothing planted): duplicates {false['duplicate']}, "
        f"leakage {false['leakage']}, PII {false['pii']}"
    )


def print_control(rows: int, seed: int) -> None:
    """The gates on clean rows of other seeds: every finding is a false positive."""
    held = rows // 20
    clean = [chat_row(random.Random(seed * 7_919 + i)) for i in range(rows)]
    clean_held = [chat_row(random.Random(seed * 104_729 + i)) for i in range(held)]
    control = run_gates({"training": jsonl(clean), "validation": jsonl(clean_held)})
    report = control.outcome.report
    print(
        f"clean control set ({rows:,} + {held:,} rows, nothing planted; gates.run {control.gates_s:.2f} s): "
        f"duplicates {round(report.duplicate_rate * rows)}, leakage {round(report.leakage_rate * held)}, "
        f"PII {sum(report.pii_findings.values())}"
    )


def print_baselines(args: argparse.Namespace, training: list[dict[str, Any]], gates_s: float) -> None:
    rows = args.rows + args.validation
    sample = training[: args.pairs_sample]
    shingle_s, pairs_s, flagged = brute_force(sample)
    pairs = (rows * (rows - 1)) / (len(sample) * (len(sample) - 1))
    projected = shingle_s * rows / len(sample) + pairs_s * pairs
    found = round(run_gates({"training": jsonl(sample)}).outcome.report.duplicate_rate * len(sample))
    print(
        f"\nbaseline 1, exact Jaccard of every pair: {len(sample):,} rows in {shingle_s + pairs_s:.2f} s; "
        f"extrapolated to {rows:,} rows (n^2 pairs): {projected:,.0f} s"
    )
    print(f"    on those rows brute force flags {flagged} near or exact duplicates, the gates {found}")
    print(f"    ratio baseline / gates.run: {projected / gates_s:,.0f}x")
    sample = training[: args.minhash_sample]
    naive_s, naive_found = naive_minhash(sample)
    projected = naive_s * rows / len(sample)
    print(
        f"baseline 2, plain datasketch (a MinHash per row, `update` per shingle, LSH, exact check): "
        f"{len(sample):,} rows in {naive_s:.2f} s ({naive_found} flagged); extrapolated to {rows:,} rows "
        f"(linear): {projected:.1f} s"
    )
    print(f"    ratio baseline / gates.run: {projected / gates_s:.2f}x")


def main() -> None:
    args = arguments()
    start = time.perf_counter()
    training, held, planted = planted_splits(args.rows, args.validation, args.seed)
    data = {"training": jsonl(training), "validation": jsonl(held)}
    words = sum(len(" ".join(m["content"] for m in r["messages"][1:]).split()) for r in training)
    print(
        f"generated {args.rows:,} training + {args.validation:,} validation chat rows in "
        f"{time.perf_counter() - start:.1f} s (seed {args.seed}; {words / args.rows:.1f} words a row, "
        f"{sum(map(len, data.values())) / 1e6:.1f} MB of JSONL)"
    )
    timed = run_gates(data, args.profile)
    total = timed.parse_s + timed.gates_s
    rows = args.rows + args.validation
    print(f"\n{'stage':<24} {'seconds':>8} {'rows/s':>9}")
    for stage, took in (("read + parse", timed.parse_s), ("gates.run", timed.gates_s), ("total", total)):
        print(f"{stage:<24} {took:8.2f} {rows / took:9,.0f}")
    verdict = "met" if total < AIM_SECONDS else "NOT met"
    print(f"aim: under {AIM_SECONDS:.0f} s for {rows:,} rows: {verdict}")
    print_detection(timed, planted)
    if args.control:
        print_control(args.control, args.seed)
    print_baselines(args, training, timed.gates_s)


if __name__ == "__main__":
    main()
