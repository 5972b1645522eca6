"""Exact and near duplicates among rows: what the duplicate and leakage gates count.

A row is read as its words: the lower-cased `\\w+` tokens of its own text (the turns' contents without
role labels; shared system prompts are left out by `rows.py`). Two rows are **exact** duplicates when
their words are the same (so case, punctuation and whitespace never tell rows apart).

**Framing.** Word 3-grams found in many rows of about the same length (in at least `FRAMING_SHARE` of the
rows of their length band and in at least `FRAMING_MIN_ROWS`: an instruction template, a fixed closing
line) say nothing about which row is which, so some rules set them aside, and with them every word they
cover, and compare what is left, a row's *content*. Rows that only share a template therefore stay
distinct. The words found in at least `COMMON_WORD_SHARE` of the short rows (the, of, please...) are not
informative. Both are estimated on up to `FRAMING_SAMPLE` rows spread evenly over the training split; a
band, because a long row holds many stock phrases by chance.

**Near duplicates.** Row b is a near duplicate of an earlier row a when any of these holds:
- the Jaccard similarity of their word 3-gram sets is at least `WHOLE_JACCARD`, or of their content 3-gram
  sets at least `NEAR_JACCARD` (small edits in longer rows; a reordered sentence changes only the 3-grams
  across its edges);
- both rows have at most `SHORT_WORDS` words, the Jaccard similarity of their content word sets is at
  least `SHORT_JACCARD` and that of their informative words at least `SHORT_INFORMATIVE_JACCARD` (one
  changed, inserted or deleted word in a 10-word row changes a third of its 3-grams but one word of its
  set; moving a sentence none);
- one row's 3-grams, and its content 3-grams, are at least `CONTAINED` contained in the other's, it has at
  least `MIN_CONTAINED` 3-grams and the other is at most `MAX_GROWTH` times as long (a sentence appended or
  cut off).

**Candidates.** Comparing every pair is quadratic; MinHash LSH proposes the pairs instead, and the rules
above decide. Over content 3-grams: 20 bands of 3 rows (a
pair of similarity 0.5 is proposed with odds 0.93, 0.7 with 0.9998); over the informative words of rows of
at most `WORD_VIEW_WORDS` words: 25 bands of 4 (0.6: 0.97, 0.7: 0.9996; few words make chance collisions
common, hence the longer bands). Words are 64-bit hashes of their bytes (the same in every process), 3-grams
mixes of three of them; the sketches of a batch of rows are computed at once with numpy, and above
`PARALLEL_ROWS` rows in one forked process per usable core, as are the checks of the proposed pairs above
`PARALLEL_CHECKS` rows. A row's candidates are checked in the order of how many bands they share with it,
then earliest first, the first that passes being the match, at most `MAX_CHECKS` of them: a near
duplicate shares many bands, rows that share only a template sentence or a few words one or two (and
there may be thousands of those).

`bench/near_duplicates.py` measures recall and precision per edit kind and row length, and the speed.
"""

from __future__ import annotations

import functools
import hashlib
import multiprocessing
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

FRAMING_SHARE = 0.05
FRAMING_MIN_ROWS = 10
FRAMING_SAMPLE = 50_000
COMMON_WORD_SHARE = 0.02
WHOLE_JACCARD = 0.8
NEAR_JACCARD = 0.7
SHORT_WORDS = 60
SHORT_JACCARD = 0.7
SHORT_INFORMATIVE_JACCARD = 0.5
WORD_VIEW_WORDS = 24
CONTAINED = 0.9
MIN_CONTAINED = 4
MAX_GROWTH = 2.5
GRAM_LSH = (20, 3)  # bands, rows a band: a pair is proposed with odds 1 - (1 - J^rows)^bands
WORD_LSH = (25, 4)
_BANDS = GRAM_LSH[0] + WORD_LSH[0]
BAND_SCAN = 100  # of the earlier rows sharing a band key, the first taken
MAX_CHECKS = 20  # candidates checked a row
PARALLEL_ROWS = 100_000
PARALLEL_CHECKS = 10_000  # rows with candidates
MAX_PROCESSES = 8
SHINGLE = 3

TOKEN = re.compile(r"\w+")
# every ASCII character that is not a word character (as `\\w` reads it) becomes a space
_ASCII_WORDS = {c: " " for c in range(128) if not (chr(c).isalnum() or chr(c) == "_")}
_SEPARATOR = "\x01"
_BATCH_WORDS = _ASCII_WORDS | {ord(_SEPARATOR): _SEPARATOR}

T = TypeVar("T")
R = TypeVar("R")
Match = tuple[str, int]  # ("exact" | "near", index of the earlier row matched)


def normalise(text: str) -> str:
    return " ".join(words(text))


def words(text: str) -> list[str]:
    lowered = text.lower()
    if lowered.isascii():
        return lowered.translate(_ASCII_WORDS).split()
    return TOKEN.findall(lowered)


_SPACE, _SEPARATOR_BYTE = ord(" "), ord(_SEPARATOR)
_POSITIONS = 64  # byte positions with a table of their own; later ones are mixed with their position


@functools.cache
def _byte_table() -> np.ndarray:
    """(position, byte) -> a random 64-bit value (seeded: the same in every process): a word's id is the
    mixed XOR of its bytes' values (tabulation hashing)."""
    return np.random.default_rng(2).integers(0, 2**64, size=(_POSITIONS, 256), dtype=np.uint64)


def _tokenise(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
    """The `words` of a batch of rows at once: a 64-bit id for each word (a hash of its UTF-8 bytes, odd),
    one row after another, how many words each row has and the sha256 of each row's words joined by
    spaces. ASCII batches are tokenised as one string; ids and row boundaries come from numpy over bytes."""
    joined = _SEPARATOR.join(t.replace(_SEPARATOR, " ") for t in texts).lower()
    if joined.isascii():
        data = joined.translate(_BATCH_WORDS).encode("ascii")
    else:
        data = _SEPARATOR.join(" ".join(words(t)) for t in texts).encode()
    raw = np.frombuffer(data, dtype=np.uint8)
    at = np.flatnonzero((raw != _SPACE) & (raw != _SEPARATOR_BYTE))  # the words' bytes
    starts = np.ones(len(at), dtype=bool)
    starts[1:] = at[1:] != at[:-1] + 1
    first = np.flatnonzero(starts)  # of each word, its first byte in `at`
    word_of = np.cumsum(starts) - 1
    lengths = np.diff(np.append(first, len(at)))
    position = np.arange(len(at)) - first[word_of]
    values = _byte_table()[position % _POSITIONS, raw[at]]
    later = position >= _POSITIONS
    if later.any():
        values[later] = _mix(values[later] ^ (position[later] // _POSITIONS).astype(np.uint64))
    ids = np.zeros(0, dtype=np.uint64)
    if len(first):
        ids = _mix(np.bitwise_xor.reduceat(values, first) ^ lengths.astype(np.uint64)) | np.uint64(1)
    rows = np.cumsum(raw == _SEPARATOR_BYTE)[at[first]]
    counts = np.bincount(rows, minlength=len(texts)).astype(np.int64)
    # each row's words joined by single spaces: word w's bytes from first[w] + w, then a space
    spaced = np.full(len(at) + len(first), _SPACE, dtype=np.uint8)
    spaced[np.arange(len(at)) + word_of] = raw[at]
    text = memoryview(spaced.tobytes())
    ends = np.cumsum(counts)
    begin = np.append(first + np.arange(len(first)), len(spaced))[ends - counts]
    end = np.maximum(begin, np.append(0, first + np.arange(len(first)) + lengths)[ends])
    digests = [hashlib.sha256(text[b:e]).digest() for b, e in zip(begin.tolist(), end.tolist(), strict=True)]
    return ids, counts, digests


def _mix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijection of uint64 that spreads every input bit over the output."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return np.asarray(x ^ (x >> np.uint64(31)))


def _weights(count: int) -> np.ndarray:
    return _mix(np.arange(1, count + 1, dtype=np.uint64)) | np.uint64(1)


@functools.cache
def _permutations(count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` affine permutations of 32-bit values (odd multipliers, seeded)."""
    rng = np.random.default_rng(1)
    a = rng.integers(1, 2**32, size=count, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
    b = rng.integers(0, 2**32, size=count, dtype=np.uint64).astype(np.uint32)
    return a[:, None], b[:, None]


def _shingles(ids: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Word 3-gram hashes of rows whose word ids lie one row after another in `ids` (`counts` a row), and
    how many each row has (a row of fewer than three words is one 3-gram, its words padded with 0)."""
    padded = np.maximum(counts, SHINGLE)
    grams = padded - SHINGLE + 1
    starts, padded_starts, gram_starts = (_starts(c) for c in (counts, padded, grams))
    words_at = np.zeros(int(padded.sum()), dtype=np.uint64)
    words_at[np.arange(len(ids)) + np.repeat(padded_starts - starts, counts)] = ids
    at = np.arange(int(grams.sum())) + np.repeat(padded_starts - gram_starts, grams)
    weights = _weights(SHINGLE)
    combined = words_at[at] * weights[0]
    for k in range(1, SHINGLE):
        combined += words_at[at + k] * weights[k]
    return _mix(combined), grams


def _starts(counts: np.ndarray) -> np.ndarray:
    starts = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    return starts


def _band_keys(
    features: np.ndarray, counts: np.ndarray, lsh: tuple[int, int], salt: int, first: int
) -> np.ndarray:
    """(bands, rows) keys: rows share a key in a band when their MinHash values agree on the band's rows.
    A row with no features gets keys of its own (from its index, `first` that of the first row)."""
    bands, band_rows = lsh
    a, b = _permutations(bands * band_rows)
    rows = len(counts)
    keys = np.empty((bands, rows), dtype=np.uint64)
    empty = counts == 0
    if features.size:
        hashed = (features >> np.uint64(32)).astype(np.uint32)
        permuted = a * hashed[None, :]
        permuted += b
        starts = _starts(counts)
        filled = np.flatnonzero(~empty)
        minhash = np.minimum.reduceat(permuted, starts[filled], axis=1).astype(np.uint64)
        banded = minhash.reshape(bands, band_rows, len(filled))
        weights = _weights(band_rows)
        combined = banded[:, 0, :] * weights[0]
        for k in range(1, band_rows):
            combined += banded[:, k, :] * weights[k]
        keys[:, filled] = _mix(combined ^ np.uint64(salt))
    if empty.any():
        lonely = (np.flatnonzero(empty) + first).astype(np.uint64) << np.uint64(16)
        band = np.arange(bands, dtype=np.uint64)[:, None] << np.uint64(8)
        keys[:, empty] = _mix(lonely[None, :] ^ band ^ np.uint64(salt) ^ np.uint64(1 << 63))
    return keys


@dataclass
class _Batch:
    """Rows tokenised: their word ids one row after another (`counts` a row), their word 3-grams
    (`gram_counts` a row) and the sha256 of each row's words."""

    ids: np.ndarray
    counts: np.ndarray
    grams: np.ndarray
    gram_counts: np.ndarray
    digests: list[bytes]

    @staticmethod
    def of(texts: Sequence[str]) -> _Batch:
        ids, counts, digests = _tokenise(texts)
        grams, gram_counts = _shingles(ids, counts)
        return _Batch(ids, counts, grams, gram_counts, digests)

    def banded_grams(self) -> np.ndarray:
        """Each 3-gram mixed with the key of its row's length band."""
        return np.asarray(self.grams ^ _BAND_KEYS[np.repeat(_band(self.counts), self.gram_counts)])

    def content(self, framing: Framing) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(content words, informative words, content 3-grams) masks: the 3-grams that are not framing, the
        words that no framing 3-gram covers, and those of them that are not common words."""
        gram_content = ~_member(self.banded_grams(), framing.grams)
        padded = np.maximum(self.counts, SHINGLE)
        padded_starts = _starts(padded)
        at = np.arange(len(self.grams)) + np.repeat(
            padded_starts - _starts(self.gram_counts), self.gram_counts
        )
        covered = np.zeros(int(padded.sum()), dtype=bool)
        for k in range(SHINGLE):
            covered[at + k] |= ~gram_content
        word_at = np.arange(len(self.ids)) + np.repeat(padded_starts - _starts(self.counts), self.counts)
        uncovered = ~covered[word_at]
        return uncovered, uncovered & ~_member(self.ids, framing.words), gram_content


@dataclass(frozen=True)
class Framing:
    """The word 3-grams common enough among the rows of a length band to say nothing about which row is
    which (each mixed with its band's key, see `_Batch.banded_grams`; sorted), and the words common among
    short rows (sorted). Bands, because a long row holds many stock phrases by chance: what is framing for
    a 10-word row is judged against rows of about its length."""

    grams: np.ndarray
    words: np.ndarray

    @staticmethod
    def estimate(texts: Sequence[str]) -> Framing:
        step = max(1, len(texts) // FRAMING_SAMPLE)
        sample = texts[::step]
        grams: dict[int, list[np.ndarray]] = {}
        band_rows: Counter[int] = Counter()
        words: list[np.ndarray] = [np.zeros(0, dtype=np.uint64)]
        short_rows = 0
        for at in range(0, len(sample), Sketches.BATCH):
            batch = _Batch.of(sample[at : at + Sketches.BATCH])
            bands = _band(batch.counts)
            banded = batch.banded_grams()
            for band in np.unique(bands).tolist():
                rows = bands == band
                band_rows[band] += int(rows.sum())
                picked = np.repeat(rows, batch.gram_counts)
                grams.setdefault(band, []).append(_once_a_row(banded[picked], batch.gram_counts[rows], at))
            short = batch.counts <= SHORT_WORDS
            words.append(_once_a_row(batch.ids[np.repeat(short, batch.counts)], batch.counts[short], at))
            short_rows += int(short.sum())
        framing = [np.zeros(0, dtype=np.uint64)]
        for band, band_grams in grams.items():
            found, count = np.unique(np.concatenate(band_grams), return_counts=True)
            common = found[count >= max(FRAMING_MIN_ROWS, FRAMING_SHARE * band_rows[band])]
            # framing in the bands either side too: an edit must not move a row out of its framing
            for near in range(max(band - 1, 0), min(band + 2, len(_BAND_KEYS))):
                framing.append(common ^ _BAND_KEYS[band] ^ _BAND_KEYS[near])
        common_words, seen = np.unique(np.concatenate(words), return_counts=True)
        limit = max(FRAMING_MIN_ROWS, COMMON_WORD_SHARE * short_rows)
        return Framing(np.unique(np.concatenate(framing)), common_words[seen >= limit])


BAND_EDGES = np.array([16, 32, 64, 128, 256, 512])  # words: rows shorter than 16, 16 to 31, ...
_BAND_KEYS = _mix(np.arange(1, len(BAND_EDGES) + 2, dtype=np.uint64) << np.uint64(32))


def _band(counts: np.ndarray) -> np.ndarray:
    return np.searchsorted(BAND_EDGES, counts, side="right")


def _once_a_row(values: np.ndarray, counts: np.ndarray, salt: int) -> np.ndarray:
    """`values` (rows of `counts` consecutive entries) with each value once per row."""
    row = np.repeat(np.arange(len(counts), dtype=np.uint64) + np.uint64(salt + 1), counts)
    _, first = np.unique(values ^ _mix(row), return_index=True)
    return values[first]


def _member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    if not sorted_set.size:
        return np.zeros(values.shape, dtype=bool)
    at = np.minimum(np.searchsorted(sorted_set, values), sorted_set.size - 1)
    return np.asarray(sorted_set[at] == values)


@dataclass(frozen=True)
class Content:
    """What near-duplicate rules compare of one row."""

    length: int  # words
    words: frozenset[int]  # not covered by framing
    informative: frozenset[int]  # of those, the words that are not common
    all_grams: frozenset[int]  # every 3-gram, framing or not
    grams: frozenset[int]


def similar(a: Content, b: Content) -> bool:
    """Whether rows with contents `a` and `b` are near duplicates (the module's rules)."""
    shared_all = len(a.all_grams & b.all_grams)
    if _jaccard(shared_all, a.all_grams, b.all_grams) >= WHOLE_JACCARD:
        return True
    shared = len(a.grams & b.grams)
    if _jaccard(shared, a.grams, b.grams) >= NEAR_JACCARD:
        return True
    # short rows: the informative words must agree too, as template words that no framing 3-gram covers
    # (slots every word or two: "New order: lamp, quantity 4, for Ivan") would make distinct rows alike
    if (
        max(a.length, b.length) <= SHORT_WORDS
        and _jaccard(len(a.words & b.words), a.words, b.words) >= SHORT_JACCARD
        and _jaccard(len(a.informative & b.informative), a.informative, b.informative)
        > SHORT_INFORMATIVE_JACCARD
    ):
        return True
    small, large = (a, b) if len(a.all_grams) <= len(b.all_grams) else (b, a)
    return (
        len(small.all_grams) >= MIN_CONTAINED
        and shared_all >= CONTAINED * len(small.all_grams)
        and shared >= CONTAINED * len(small.grams)
        and large.length <= MAX_GROWTH * max(small.length, 1)
    )


def _jaccard(shared: int, a: frozenset[int], b: frozenset[int]) -> float:
    """The Jaccard similarity of `a` and `b`, which have `shared` members in common."""
    return shared / (len(a) + len(b) - shared) if a or b else 0.0


class Sketches:
    """Rows' digests (sha256 of their words), lengths and LSH band keys (content 3-grams, then content words
    for short rows); `contents` gives rows' `Content`."""

    BATCH = 4096

    def __init__(self, texts: Sequence[str], framing: Framing) -> None:
        self.texts = texts
        self.framing = framing
        self.digests: list[bytes] = []
        keys: list[np.ndarray] = []
        for digests, batch_keys in _sketch_all(texts, framing):
            self.digests += digests
            keys.append(batch_keys)
        empty = np.zeros((GRAM_LSH[0] + WORD_LSH[0], 0), dtype=np.uint64)
        self.keys = np.concatenate(keys, axis=1) if keys else empty

    def __len__(self) -> int:
        return len(self.digests)

    def contents(self, rows: Sequence[int]) -> dict[int, Content]:
        found: dict[int, Content] = {}
        for at in range(0, len(rows), self.BATCH):
            chunk = rows[at : at + self.BATCH]
            batch = _Batch.of([self.texts[i] for i in chunk])
            word_keep, informative, gram_keep = batch.content(self.framing)
            word_ends, gram_ends = np.cumsum(batch.counts), np.cumsum(batch.gram_counts)
            for k, i in enumerate(chunk):
                words_at = slice(int(word_ends[k] - batch.counts[k]), int(word_ends[k]))
                grams_at = slice(int(gram_ends[k] - batch.gram_counts[k]), int(gram_ends[k]))
                found[i] = Content(
                    int(batch.counts[k]),
                    frozenset(batch.ids[words_at][word_keep[words_at]].tolist()),
                    frozenset(batch.ids[words_at][informative[words_at]].tolist()),
                    frozenset(batch.grams[grams_at][gram_keep[grams_at]].tolist()),
                    frozenset(batch.grams[grams_at].tolist()),
                )
        return found


def _sketch(texts: Sequence[str], first: int, framing: Framing) -> tuple[list[bytes], np.ndarray]:
    """Digests and band keys (3-gram bands, then word bands) of a batch of rows, the first of them row
    `first`."""
    batch = _Batch.of(texts)
    _, word_keep, gram_keep = batch.content(framing)
    gram_keys = _band_keys(
        batch.grams[gram_keep], _row_sums(gram_keep, batch.gram_counts), GRAM_LSH, 1, first
    )
    word_keep &= np.repeat(batch.counts <= WORD_VIEW_WORDS, batch.counts)
    word_keys = _band_keys(batch.ids[word_keep], _row_sums(word_keep, batch.counts), WORD_LSH, 2, first)
    return batch.digests, np.concatenate([gram_keys, word_keys])


_FORKED: dict[str, Any] = {}  # what forked workers read, set before they start


def _spread(work: Callable[[list[T]], list[R]], items: list[T], at_least: int) -> list[R]:
    """`work(items)`, in forked processes (one per usable core, each a contiguous share of `items`) when
    there are at least `at_least` items, more than one core and fork."""
    cores = min(len(os.sched_getaffinity(0)), MAX_PROCESSES)
    if len(items) < at_least or cores < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return work(items)
    _FORKED["work"] = work
    try:
        share = -(-len(items) // cores)
        with ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("fork")) as pool:
            parts = list(pool.map(_forked, [items[at : at + share] for at in range(0, len(items), share)]))
    finally:
        _FORKED.clear()
    return [result for part in parts for result in part]


def _forked(items: list[Any]) -> list[Any]:
    return list(_FORKED["work"](items))


def _sketch_all(texts: Sequence[str], framing: Framing) -> list[tuple[list[bytes], np.ndarray]]:
    """`_sketch` over every batch of rows."""

    def work(starts: list[int]) -> list[tuple[list[bytes], np.ndarray]]:
        step = Sketches.BATCH
        return [_sketch(texts[at : at + step], at, framing) for at in starts]

    return _spread(work, list(range(0, len(texts), Sketches.BATCH)), PARALLEL_ROWS // Sketches.BATCH)


def _row_sums(mask: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """How many entries of each row (rows of `counts` consecutive entries) `mask` holds."""
    ends = np.cumsum(counts)
    totals = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
    return np.asarray(totals[ends] - totals[ends - counts])


class Index:
    """Exact and near-duplicate lookups against the training rows. The indexed rows are the first of each
    set of exact duplicates."""

    def __init__(self, training: Sketches) -> None:
        self.training = training
        self.first: dict[bytes, int] = {}
        for i, digest in enumerate(training.digests):
            self.first.setdefault(digest, i)
        self.indexed = np.fromiter(sorted(self.first.values()), dtype=np.int64, count=len(self.first))
        # per band, the indexed rows (by rank) in key order, within a key earlier rows first: a key's low
        # bits give way to the rank, so that one plain sort of the keys orders both (an argsort, stable,
        # takes several times longer; the keys keep at least 40 bits)
        self.rank_bits = np.uint64(max(24, (len(self.indexed) - 1).bit_length()))
        ranks = (np.uint64(1) << self.rank_bits) - np.uint64(1)
        packed = np.sort(
            (training.keys[:, self.indexed] & ~ranks) | np.arange(len(self.indexed), dtype=np.uint64)
        )
        self.order = (packed & ranks).astype(np.int64)
        self.sorted_keys = packed >> self.rank_bits

    def _keys(self, keys: np.ndarray) -> np.ndarray:
        """Band keys as `sorted_keys` holds them."""
        return np.asarray(keys >> self.rank_bits)

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
        # where each sorted position's key group starts; how many earlier rows of its key it takes (at most
        # BAND_SCAN), and from where in the flattened order
        group_start = np.where(same, 0, np.arange(count))
        np.maximum.accumulate(group_start, axis=1, out=group_start)
        taken = np.minimum(np.arange(count)[None, :] - group_start, BAND_SCAN).ravel()
        at = np.flatnonzero(taken)
        ranks = self._candidates(
            self.order.ravel()[at], count, at - at % count + group_start.ravel()[at], taken[at]
        )
        candidates = {int(self.indexed[rank]): rows for rank, rows in ranks.items()}
        training = self.training

        def work(pairs: list[tuple[int, list[int]]]) -> list[Match | None]:
            mine = training.contents(sorted({row for row, _ in pairs} | {r for _, c in pairs for r in c}))
            return [self._near(mine[row], rows, mine) for row, rows in pairs]

        pairs = list(candidates.items())
        for (row, _), match in zip(pairs, _spread(work, pairs, PARALLEL_CHECKS), strict=True):
            found[row] = match
        return found

    def matches(self, other: Sketches) -> list[Match | None]:
        """For every row of `other` (an evaluation split), its match among the training rows."""
        found: list[Match | None] = [None] * len(other)
        if not len(other):
            return found
        bands, keys = self.sorted_keys.shape[0], self._keys(other.keys)
        lo = np.stack([np.searchsorted(self.sorted_keys[b], keys[b], side="left") for b in range(bands)])
        hi = np.stack([np.searchsorted(self.sorted_keys[b], keys[b], side="right") for b in range(bands)])
        exact = np.fromiter((d in self.first for d in other.digests), dtype=bool, count=len(other))
        taken = np.where(exact[None, :], 0, np.minimum(hi - lo, BAND_SCAN)).ravel()
        at = np.flatnonzero(taken)
        count = self.sorted_keys.shape[1]
        candidates = self._candidates(
            at % len(other), len(other), at // len(other) * count + lo.ravel()[at], taken[at]
        )
        theirs = other.contents(sorted(candidates))
        mine = self.training.contents(sorted({r for c in candidates.values() for r in c}))
        for i, digest in enumerate(other.digests):
            if digest in self.first:
                found[i] = ("exact", self.first[digest])
            elif i in candidates:
                found[i] = self._near(theirs[i], candidates[i], mine)
        return found

    def _candidates(
        self, queries: np.ndarray, query_count: int, starts: np.ndarray, taken: np.ndarray
    ) -> dict[int, list[int]]:
        """{query: the training rows to check}, from what each query (a number below `query_count`) shares a
        band key with: `taken[k]` indexed ranks from `starts[k]` in the flattened `order` (a band's earliest
        `BAND_SCAN` of a key). The rows sharing most bands come first, then the earlier, at most
        `MAX_CHECKS`: a near duplicate shares many bands (a pair of similarity 0.7 about 7 of the 20 3-gram
        bands), rows that share only a template sentence or a few words one or two."""
        count = self.sorted_keys.shape[1]
        order = self.order.ravel()
        offsets = np.arange(int(taken.sum())) - np.repeat(np.cumsum(taken) - taken, taken)
        earlier = order[np.repeat(starts, taken) + offsets]
        # each (query, earlier rank) once, with the number of bands they share
        pair, shared = np.unique(np.repeat(queries, taken) * count + earlier, return_counts=True)
        asked, earlier = np.divmod(pair, count)
        most = _BANDS - shared
        if (_BANDS + 1) * query_count * count < 2**63:  # one int64 sort
            ranked = np.sort((asked * (_BANDS + 1) + most) * count + earlier)
            asked, earlier = ranked // ((_BANDS + 1) * count), ranked % count
        else:
            ranked = np.lexsort((earlier, most, asked))
            asked, earlier = asked[ranked], earlier[ranked]
        firsts = np.flatnonzero(np.diff(asked, prepend=-1))
        within = np.arange(len(asked)) - np.repeat(firsts, np.diff(np.append(firsts, len(asked))))
        keep = within < MAX_CHECKS
        asked, earlier = asked[keep], self.indexed[earlier[keep]]
        if not len(asked):
            return {}
        splits = np.flatnonzero(np.diff(asked)) + 1
        queried = asked[np.append(0, splits)].tolist()
        return dict(zip(queried, (rows.tolist() for rows in np.split(earlier, splits)), strict=True))

    @staticmethod
    def _near(content: Content, rows: list[int], contents: dict[int, Content]) -> Match | None:
        """The first of `rows` (training rows, in `_candidates`' order) that `content` is a near duplicate
        of."""
        for row in rows:
            if similar(content, contents[row]):
                return "near", row
        return None
