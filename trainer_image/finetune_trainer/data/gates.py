"""The data gates: what a dataset must pass before any GPU is requested.

- duplicates: exact (normalised text) and near (word 3-gram Jaccard >= 0.8: MinHash LSH finds candidates
  generously, the exact Jaccard of the shingle sets decides) within the training split; the rate is
  duplicated rows / rows.
- leakage: validation/holdout rows that are exact or near duplicates of a training row.
- PII: emails, phones, cards, national ids, IPs (`pii.py`); Block fails on any, Redact masks them in the
  rows that train, Warn reports only.
- preference hygiene (DPO): ties and repeated pairs dropped, synthetic rows above the cap dropped, the
  adversarial share held within bounds.
- minimum rows, and malformed rows (any fails the data, with the first of them listed).

Pure: rows in, a report and the rows to train on out. Reading files is `validate.py`'s job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from datasketch import MinHash, MinHashLSH

from finetune_api.run_layout import DataValidationReport
from finetune_api.v1alpha1.common import DatasetFormat
from finetune_api.v1alpha1.finetunejob import DataGates, PreferenceGates
from finetune_trainer.data import pii
from finetune_trainer.data.rows import Dataset, Row, preference_parts

NEAR_DUPLICATE_JACCARD = 0.8
CANDIDATE_JACCARD = 0.5  # LSH recall near the threshold is poor; candidates are checked exactly
PERMUTATIONS = 128
EXAMPLES = 5
TOKEN = re.compile(r"\w+")


@dataclass
class Outcome:
    report: DataValidationReport
    rows: dict[str, list[Row]] = field(default_factory=dict)  # per split, after drops and redaction


def normalise(text: str) -> str:
    return " ".join(TOKEN.findall(text.lower()))


@dataclass(frozen=True)
class _Sketch:
    digest: str
    shingles: frozenset[str]
    minhash: MinHash


def _sketch(text: str) -> _Sketch:
    normal = normalise(text)
    tokens = normal.split()
    shingles = frozenset(" ".join(tokens[i : i + 3]) for i in range(max(1, len(tokens) - 2)))
    m = MinHash(num_perm=PERMUTATIONS, seed=1)
    m.update_batch([s.encode() for s in shingles])
    return _Sketch(hashlib.sha256(normal.encode()).hexdigest(), shingles, m)


class _Index:
    """Exact and near-duplicate lookups over the rows added so far."""

    def __init__(self) -> None:
        self.exact: dict[str, int] = {}
        self.sketches: dict[int, _Sketch] = {}
        self.lsh = MinHashLSH(threshold=CANDIDATE_JACCARD, num_perm=PERMUTATIONS)

    def match(self, sketch: _Sketch) -> tuple[str, int] | None:
        """("exact" | "near", line of the earliest matching row) or None."""
        if sketch.digest in self.exact:
            return "exact", self.exact[sketch.digest]
        for line in sorted(int(k) for k in self.lsh.query(sketch.minhash)):
            other = self.sketches[line].shingles
            if len(sketch.shingles & other) / len(sketch.shingles | other) >= NEAR_DUPLICATE_JACCARD:
                return "near", line
        return None

    def add(self, line: int, sketch: _Sketch) -> None:
        if sketch.digest in self.exact:
            return
        self.exact[sketch.digest] = line
        self.sketches[line] = sketch
        self.lsh.insert(str(line), sketch.minhash)


@dataclass
class _Findings:
    failed: list[str] = field(default_factory=list)
    examples: dict[str, list[str]] = field(default_factory=dict)
    dropped: Counter[str] = field(default_factory=Counter)

    def example(self, kind: str, text: str) -> None:
        listed = self.examples.setdefault(kind, [])
        if len(listed) < EXAMPLES:
            listed.append(text)


def run(splits: dict[str, Dataset], gates: DataGates) -> Outcome:
    """Check `splits` ("training" and optionally "validation", "holdout") against `gates`."""
    found = _Findings()
    problems = [str(p) for d in splits.values() for p in d.problems]
    bad = sum(d.problem_count for d in splits.values())
    if bad:
        found.failed.append(f"{bad} malformed rows (first: {problems[0]})")
    kept = {name: list(d.rows) for name, d in splits.items()}
    if splits["training"].format == DatasetFormat.PREFERENCE and gates.preference is not None:
        kept["training"] = _preference(kept["training"], splits["training"].name, gates.preference, found)
    duplicate_rate, leakage_rate = _repeats(splits, kept, gates, found)
    kept, findings = _pii(splits, kept, gates, found)
    if len(kept["training"]) < gates.min_rows:
        found.failed.append(f"{len(kept['training'])} training rows < dataGates.minRows {gates.min_rows}")
    report = DataValidationReport(
        passed=not found.failed,
        rows={name: len(rs) for name, rs in kept.items()},
        duplicate_rate=round(duplicate_rate, 6),
        leakage_rate=round(leakage_rate, 6),
        pii_findings=dict(findings),
        dropped=dict(found.dropped),
        failed_rules=found.failed[:32],
        problems=problems[:50],
        examples=found.examples,
    )
    return Outcome(report, kept)


def _repeats(
    splits: dict[str, Dataset], kept: dict[str, list[Row]], gates: DataGates, found: _Findings
) -> tuple[float, float]:
    """(duplicate rate within training, leakage rate of evaluation rows into training)."""
    index = _Index()
    duplicates = 0
    for row in kept["training"]:
        sketch = _sketch(row.similarity_text)
        match = index.match(sketch)
        if match is not None:
            duplicates += 1
            found.example(
                "duplicate", f"{splits['training'].name}:{row.line} {match[0]} duplicate of line {match[1]}"
            )
        index.add(row.line, sketch)
    rows = len(kept["training"])
    duplicate_rate = duplicates / rows if rows else 0.0
    if duplicate_rate > gates.max_duplicate_rate:
        found.failed.append(
            f"duplicate rate {duplicate_rate:.1%} > {gates.max_duplicate_rate:.1%} "
            f"({duplicates} of {rows} rows)"
        )
    leaked = evaluated = 0
    for name in ("validation", "holdout"):
        for row in kept.get(name, []):
            evaluated += 1
            match = index.match(_sketch(row.similarity_text))
            if match is not None:
                leaked += 1
                where = f"{splits[name].name}:{row.line}"
                found.example("leakage", f"{where} {match[0]} duplicate of training line {match[1]}")
    leakage_rate = leaked / evaluated if evaluated else 0.0
    if leakage_rate > gates.max_leakage_rate:
        found.failed.append(
            f"leakage rate {leakage_rate:.1%} > {gates.max_leakage_rate:.1%} "
            f"({leaked} of {evaluated} evaluation rows repeat training rows)"
        )
    return duplicate_rate, leakage_rate


def _pii(
    splits: dict[str, Dataset], kept: dict[str, list[Row]], gates: DataGates, found: _Findings
) -> tuple[dict[str, list[Row]], Counter[str]]:
    findings: Counter[str] = Counter()
    policy = gates.pii
    if policy.action == "Off":
        return kept, findings
    kinds = list(policy.kinds)
    for name, rows in kept.items():
        for row in rows:
            for finding in pii.find(row.text, kinds):
                findings[finding.kind] += 1
                found.example("pii", f"{splits[name].name}:{row.line} {finding.kind} {_mask(finding.text)}")
    if findings and policy.action == "Block":
        listed = ", ".join(f"{n} {kind}" for kind, n in sorted(findings.items()))
        found.failed.append(f"PII found: {listed} (dataGates.pii.action Block)")
    if findings and policy.action == "Redact":
        kept = {name: [redact_row(r, kinds) for r in rows] for name, rows in kept.items()}
    return kept, findings


def _preference(rows: list[Row], file: str, policy: PreferenceGates, found: _Findings) -> list[Row]:
    seen: dict[tuple[str, str, str], int] = {}
    kept: list[Row] = []
    for row in rows:
        prompt, chosen, rejected = preference_parts(row)
        if policy.drop_ties and normalise(chosen) == normalise(rejected):
            found.dropped["tie"] += 1
            found.example("tie", f"{file}:{row.line} preferred and non-preferred outputs are the same")
            continue
        key = (normalise(prompt), normalise(chosen), normalise(rejected))
        if policy.drop_duplicate_pairs and key in seen:
            found.dropped["duplicate_pair"] += 1
            found.example("duplicate_pair", f"{file}:{row.line} repeats the pair on line {seen[key]}")
            continue
        seen[key] = row.line
        kept.append(row)
    synthetic = [r for r in kept if r.synthetic]
    share = policy.max_synthetic_share
    if len(synthetic) > share * len(kept):
        # keep s synthetic rows with s <= share * (others + s)
        others = len(kept) - len(synthetic)
        excess = {r.line for r in synthetic[int(share * others / (1 - share)) :]}
        found.dropped["synthetic_over_cap"] += len(excess)
        kept = [r for r in kept if r.line not in excess]
    balance = policy.adversarial_balance
    if balance is not None and kept:
        adversarial = sum(r.adversarial for r in kept) / len(kept)
        if not balance.min <= adversarial <= balance.max:
            found.failed.append(
                f"adversarial share {adversarial:.1%} outside [{balance.min:.0%}, {balance.max:.0%}] "
                "(rows with metadata.adversarial: true)"
            )
    return kept


def _mask(text: str) -> str:
    return text[:2] + "*" * max(0, len(text) - 4) + text[-2:] if len(text) > 4 else "****"


def redact_row(row: Row, kinds: Sequence[str]) -> Row:
    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return pii.redact(value, kinds)
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            return {k: v if k == "url" else walk(v) for k, v in value.items()}
        return value

    own = None if row.own_text is None else pii.redact(row.own_text, kinds)
    return dataclasses.replace(row, data=walk(row.data), text=pii.redact(row.text, kinds), own_text=own)
