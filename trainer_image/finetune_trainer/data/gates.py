"""The data gates: what a dataset must pass before any GPU is requested.

- duplicates: exact (normalised text) and near (word 3-gram Jaccard >= 0.8: MinHash LSH finds candidates
  generously, the exact Jaccard of the shingle sets decides) within the training split; the rate is
  duplicated rows / rows. For speed (100,000 rows in seconds, not minutes) shingles are 64-bit hashes
  (the exact Jaccard is taken over them; two shingles collide with odds of about 2^-64), and MinHash and
  the LSH bands are computed for all rows at once with numpy, with datasketch's permutations and band
  layout; a row's candidates come from sorting the band keys, not from a per-row index.
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
import functools
import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
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
SHINGLE = 3  # words per shingle

Match = tuple[str, int]  # ("exact" | "near", the training row matched)


@dataclass
class Outcome:
    report: DataValidationReport
    rows: dict[str, list[Row]] = field(default_factory=dict)  # per split, after drops and redaction


def normalise(text: str) -> str:
    return " ".join(TOKEN.findall(text.lower()))


class _WordIds(dict[str, int]):
    """A 64-bit id per word (blake2b, so the same in every process), computed once per word."""

    def __missing__(self, word: str) -> int:
        value = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        self[word] = value
        return value


def _mix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijection of uint64 that spreads every input bit over the output."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return np.asarray(x ^ (x >> np.uint64(31)))


def _weights(count: int) -> np.ndarray:
    """Odd 64-bit weights: a 3-gram's hash and a band's key sum their parts times these, then mix."""
    return _mix(np.arange(1, count + 1, dtype=np.uint64)) | np.uint64(1)


@functools.cache
def _minhash_scheme() -> tuple[np.ndarray, np.ndarray, int, int]:
    """datasketch's affine32 permutations (seed 1) and its LSH optimum (bands, rows per band) for
    `CANDIDATE_JACCARD`."""
    a, b = MinHash(num_perm=PERMUTATIONS, seed=1).permutations
    lsh = MinHashLSH(threshold=CANDIDATE_JACCARD, num_perm=PERMUTATIONS)
    return a.astype(np.uint32)[:, None], b.astype(np.uint32)[:, None], int(lsh.b), int(lsh.r)


class _Sketches:
    """Per text: the sha256 of its normalised form, the 64-bit hashes of its word 3-grams (the exact
    Jaccard is taken over these) and one key per LSH band of its MinHash. Computed a batch of texts at a
    time with numpy: MinHash over the 3-gram hashes with datasketch's affine32 permutations."""

    BATCH = 1024

    def __init__(self, texts: Sequence[str], words: _WordIds) -> None:
        self.digests: list[bytes] = []
        shingles: list[np.ndarray] = []
        keys: list[np.ndarray] = []
        counts: list[int] = []
        for at in range(0, len(texts), self.BATCH):
            batch_shingles, batch_counts = self._shingles(texts[at : at + self.BATCH], words)
            shingles.append(batch_shingles)
            counts += batch_counts
            keys.append(self._band_keys(batch_shingles, batch_counts))
        self.offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.offsets[1:])
        self.shingles = np.concatenate(shingles) if shingles else np.zeros(0, dtype=np.uint64)
        _, _, bands, _ = _minhash_scheme()
        self.keys = np.concatenate(keys, axis=1) if keys else np.zeros((bands, 0), dtype=np.uint64)

    def __len__(self) -> int:
        return len(self.digests)

    def shingle_set(self, i: int) -> set[int]:
        return set(self.shingles[self.offsets[i] : self.offsets[i + 1]].tolist())

    def _shingles(self, texts: Sequence[str], words: _WordIds) -> tuple[np.ndarray, list[int]]:
        """The 3-gram hashes of `texts`, concatenated, and how many each text has. A text of fewer than
        three words is one 3-gram, padded with id 0."""
        ids: list[int] = []
        lengths: list[int] = []
        for text in texts:
            tokens = TOKEN.findall(text.lower())
            self.digests.append(hashlib.sha256(" ".join(tokens).encode()).digest())
            ids.extend(map(words.__getitem__, tokens))
            if len(tokens) < SHINGLE:
                ids.extend([0] * (SHINGLE - len(tokens)))
            lengths.append(max(len(tokens), SHINGLE))
        counts = [n - SHINGLE + 1 for n in lengths]
        token_starts = np.cumsum([0, *lengths[:-1]])
        shingle_starts = np.cumsum([0, *counts[:-1]])
        at = np.arange(sum(counts)) + np.repeat(token_starts - shingle_starts, counts)
        word = np.array(ids, dtype=np.uint64)
        weights = _weights(SHINGLE)
        combined = word[at] * weights[0]
        for k in range(1, SHINGLE):
            combined += word[at + k] * weights[k]
        return _mix(combined), counts

    @staticmethod
    def _band_keys(shingles: np.ndarray, counts: list[int]) -> np.ndarray:
        """(bands, texts) keys: texts share a key in a band when their MinHash values agree there."""
        a, b, bands, rows = _minhash_scheme()
        hashed = (shingles >> np.uint64(32)).astype(np.uint32)
        permuted = a * hashed[None, :]
        permuted += b
        starts = np.cumsum([0, *counts[:-1]])
        minhash = np.minimum.reduceat(permuted, starts, axis=1)[: bands * rows].astype(np.uint64)
        banded = minhash.reshape(bands, rows, len(counts))
        weights = _weights(rows)
        keys = banded[:, 0, :] * weights[0]
        for k in range(1, rows):
            keys += banded[:, k, :] * weights[k]
        return np.asarray(_mix(keys))


class _Index:
    """Exact and near-duplicate lookups against the training rows. A row's near-duplicate candidates are
    the rows with a MinHash band in common (LSH); the exact Jaccard of the 3-gram sets decides, and the
    earliest row that passes is the match."""

    def __init__(self, training: _Sketches) -> None:
        self.training = training
        self.first: dict[bytes, int] = {}  # digest -> its first row (the rows that are indexed)
        for i, digest in enumerate(training.digests):
            self.first.setdefault(digest, i)
        self.indexed = np.fromiter(sorted(self.first.values()), dtype=np.int64, count=len(self.first))
        keys = training.keys[:, self.indexed]
        # per band, the indexed rows (by rank) in key order; within a key, earlier rows first
        self.order = np.argsort(keys, axis=1, kind="stable")
        self.sorted_keys = np.take_along_axis(keys, self.order, axis=1)

    def training_matches(self) -> list[Match | None]:
        """For every training row, its match among the indexed rows before it."""
        found: list[Match | None] = [None] * len(self.training)
        for i, digest in enumerate(self.training.digests):
            if self.first[digest] != i:
                found[i] = ("exact", self.first[digest])
        bands, count = self.sorted_keys.shape
        if count < 2:
            return found
        same = np.zeros((bands, count), dtype=bool)
        same[:, 1:] = self.sorted_keys[:, 1:] == self.sorted_keys[:, :-1]
        # where each sorted position's key group starts, and where each rank sits in the sorted order
        group_start = np.where(same, 0, np.arange(count))
        np.maximum.accumulate(group_start, axis=1, out=group_start)
        where = np.empty_like(self.order)
        np.put_along_axis(where, self.order, np.arange(count)[None, :], axis=1)
        band = np.arange(bands)
        has_earlier = np.take_along_axis(same, where, axis=1).any(axis=0)
        for rank in np.flatnonzero(has_earlier).tolist():
            at = where[:, rank]
            starts = group_start[band, at]
            ranges = [(b, int(starts[b]), int(at[b])) for b in np.flatnonzero(starts < at).tolist()]
            found[int(self.indexed[rank])] = self._near(self.training, int(self.indexed[rank]), ranges)
        return found

    def matches(self, other: _Sketches) -> list[Match | None]:
        """For every row of `other` (an evaluation split), its match among the training rows."""
        found: list[Match | None] = [None] * len(other)
        bands = self.sorted_keys.shape[0]
        lo = np.stack(
            [np.searchsorted(self.sorted_keys[b], other.keys[b], side="left") for b in range(bands)]
        )
        hi = np.stack(
            [np.searchsorted(self.sorted_keys[b], other.keys[b], side="right") for b in range(bands)]
        )
        hit = set(np.flatnonzero(np.any(hi > lo, axis=0)).tolist())
        for i, digest in enumerate(other.digests):
            if digest in self.first:
                found[i] = ("exact", self.first[digest])
            elif i in hit:
                shared = np.flatnonzero(hi[:, i] > lo[:, i]).tolist()
                ranges = [(b, int(lo[b, i]), int(hi[b, i])) for b in shared]
                found[i] = self._near(other, i, ranges)
        return found

    def _near(self, sketches: _Sketches, i: int, ranges: list[tuple[int, int, int]]) -> Match | None:
        """The earliest candidate (ranks `order[band, start:end]` for each range) whose 3-gram Jaccard with
        row `i` of `sketches` is at least `NEAR_DUPLICATE_JACCARD`, as ("near", training row)."""
        candidates: set[int] = set()
        for band, start, end in ranges:
            candidates.update(self.order[band, start:end].tolist())
        mine = sketches.shingle_set(i)
        for rank in sorted(candidates):
            row = int(self.indexed[rank])
            other = self.training.shingle_set(row)
            if len(mine & other) / len(mine | other) >= NEAR_DUPLICATE_JACCARD:
                return "near", row
        return None


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
    words = _WordIds()
    training = kept["training"]
    index = _Index(_Sketches([row.similarity_text for row in training], words))
    duplicates = 0
    file = splits["training"].name
    for row, match in zip(training, index.training_matches(), strict=True):
        if match is not None:
            duplicates += 1
            line = training[match[1]].line
            found.example("duplicate", f"{file}:{row.line} {match[0]} duplicate of line {line}")
    rows = len(training)
    duplicate_rate = duplicates / rows if rows else 0.0
    if duplicate_rate > gates.max_duplicate_rate:
        found.failed.append(
            f"duplicate rate {duplicate_rate:.1%} > {gates.max_duplicate_rate:.1%} "
            f"({duplicates} of {rows} rows)"
        )
    leaked = evaluated = 0
    for name in ("validation", "holdout"):
        evaluation = kept.get(name, [])
        matches = index.matches(_Sketches([row.similarity_text for row in evaluation], words))
        for row, match in zip(evaluation, matches, strict=True):
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
