"""The data gates: what a dataset must pass before any GPU is requested.

- duplicates: exact (the same words) and near (small edits, with the rows' shared framing set aside: the
  rules and their thresholds are in `duplicates.py`) within the training split; the rate is duplicated
  rows / rows. Under `maxDuplicateRate` the duplicates are dropped, the first of each kept, and the report
  counts them (`dropped: {exact_duplicate, near_duplicate}`); over it the data fails and nothing is dropped.
- leakage: validation/holdout rows that are exact or near duplicates of a training row.
- PII: emails, phones, cards, national ids, IPs (`pii.py`); Block fails on any, Redact masks them in the
  rows that train, Warn reports only.
- preference hygiene (DPO): ties and repeated pairs dropped, synthetic rows above the cap dropped, the
  adversarial share held within bounds.
- minimum rows, and malformed rows (any fails the data, with the first of them listed).

The report also carries the training rows' estimated tokens (mean and longest, after drops and
redaction): what the `"auto"` rule sizes micro-batches by (`finetune_api.hyperparameters`).

Pure: rows in, a report and the rows to train on out. Reading files is `validate.py`'s job.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from finetune_api.hyperparameters import token_lengths
from finetune_api.run_layout import DataValidationReport
from finetune_api.v1alpha1.common import DatasetFormat
from finetune_api.v1alpha1.finetunejob import DataGates, PreferenceGates
from finetune_trainer.data import duplicates, pii
from finetune_trainer.data.duplicates import normalise
from finetune_trainer.data.rows import Dataset, Row, preference_parts

EXAMPLES = 5


@dataclass
class Outcome:
    report: DataValidationReport
    rows: dict[str, list[Row]] = field(default_factory=dict)  # per split, after drops and redaction


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
        tokens=token_lengths(row.text for row in kept["training"]),
        failed_rules=found.failed[:32],
        problems=problems[:50],
        examples=found.examples,
    )
    return Outcome(report, kept)


def _repeats(
    splits: dict[str, Dataset], kept: dict[str, list[Row]], gates: DataGates, found: _Findings
) -> tuple[float, float]:
    """(duplicate rate within training, leakage rate of evaluation rows into training). Under the gate the
    duplicated training rows are dropped from `kept`, the first of each kept."""
    training = kept["training"]
    texts = [row.similarity_text for row in training]
    framing = duplicates.Framing.estimate(texts)
    index = duplicates.Index(duplicates.Sketches(texts, framing))
    repeated: dict[int, str] = {}
    file = splits["training"].name
    for i, (row, match) in enumerate(zip(training, index.training_matches(), strict=True)):
        if match is not None:
            repeated[i] = match[0]
            line = training[match[1]].line
            found.example("duplicate", f"{file}:{row.line} {match[0]} duplicate of line {line}")
    rows = len(training)
    duplicate_rate = len(repeated) / rows if rows else 0.0
    if duplicate_rate > gates.max_duplicate_rate:
        found.failed.append(
            f"duplicate rate {duplicate_rate:.1%} > {gates.max_duplicate_rate:.1%} "
            f"({len(repeated)} of {rows} rows)"
        )
    elif repeated:
        kept["training"] = [row for i, row in enumerate(training) if i not in repeated]
        for kind in repeated.values():
            found.dropped[f"{kind}_duplicate"] += 1
    leaked = evaluated = 0
    for name in ("validation", "holdout"):
        evaluation = kept.get(name, [])
        sketches = duplicates.Sketches([row.similarity_text for row in evaluation], framing)
        for row, match in zip(evaluation, index.matches(sketches), strict=True):
            evaluated += 1
            if match is not None:
                leaked += 1
                where = f"{splits[name].name}:{row.line}"
                line = training[match[1]].line
                found.example("leakage", f"{where} {match[0]} duplicate of training line {line}")
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
