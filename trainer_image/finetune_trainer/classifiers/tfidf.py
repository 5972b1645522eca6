"""scikit-learn's TfidfVectorizer.transform, reimplemented for the packaged classifiers: `word` analysers
(token pattern, stop words, n-grams joined by a space) and `char_wb` (character n-grams inside
space-padded words), raw or sublinear term frequency times idf, L2-normalised. A text becomes its non-zero
columns and values (a sparse row), so a linear model scores it as `coef[:, cols] @ values`."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

WHITESPACE = re.compile(r"\s\s+")


@dataclass(frozen=True)
class Vectoriser:
    vocabulary: dict[str, int]
    idf: np.ndarray
    analyzer: str  # "word" or "char_wb"
    ngram_range: tuple[int, int]
    lowercase: bool = True
    token_pattern: str = r"(?u)\b\w\w+\b"
    stop_words: frozenset[str] = frozenset()
    sublinear_tf: bool = False
    norm: str | None = "l2"

    @classmethod
    def from_settings(cls, settings: dict[str, Any], idf: np.ndarray) -> Vectoriser:
        """From the JSON form `convert` writes (or guardian's bundle): vocabulary plus settings."""
        low, high = settings["ngram_range"]
        return cls(
            vocabulary=settings["vocabulary"],
            idf=np.asarray(idf, dtype=np.float64),
            analyzer=settings.get("analyzer", "word"),
            ngram_range=(int(low), int(high)),
            lowercase=settings.get("lowercase", True),
            token_pattern=settings.get("token_pattern", cls.token_pattern),
            stop_words=frozenset(settings.get("stop_words") or ()),
            sublinear_tf=settings.get("sublinear_tf", False),
            norm=settings.get("norm", "l2"),
        )

    def __post_init__(self) -> None:
        if self.analyzer not in ("word", "char_wb"):
            raise ValueError(f"unsupported analyzer {self.analyzer!r}")
        if self.norm not in ("l2", None):
            raise ValueError(f"unsupported norm {self.norm!r}")
        object.__setattr__(self, "_token", re.compile(self.token_pattern))

    def ngrams(self, text: str) -> list[str]:
        if self.lowercase:
            text = text.lower()
        low, high = self.ngram_range
        if self.analyzer == "char_wb":
            return _char_wb(WHITESPACE.sub(" ", text), low, high)
        tokens = [t for t in self._token.findall(text) if t not in self.stop_words]  # type: ignore[attr-defined]
        grams = list(tokens) if low == 1 else []
        for n in range(max(low, 2), high + 1):
            grams += [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        return grams

    def row(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(columns, values) of the text's TF-IDF row."""
        counts = Counter(g for g in self.ngrams(text) if g in self.vocabulary)
        cols = np.fromiter((self.vocabulary[g] for g in counts), dtype=np.int64, count=len(counts))
        tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        if self.sublinear_tf:
            tf = np.log(tf) + 1.0
        values = tf * self.idf[cols]
        if self.norm == "l2":
            norm = math.sqrt(float(values @ values))
            if norm > 0:
                values = values / norm
        return cols, values

    def rows(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [self.row(t) for t in texts]


def _char_wb(text: str, low: int, high: int) -> list[str]:
    grams = []
    for word in text.split():
        padded = f" {word} "
        for n in range(low, high + 1):
            offset = 0
            grams.append(padded[offset : offset + n])
            while offset + n < len(padded):
                offset += 1
                grams.append(padded[offset : offset + n])
            if offset == 0:  # a word shorter than n is counted once
                break
    return grams
