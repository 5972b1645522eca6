"""string_check and text_similarity: compare a rendered `input` with a rendered `reference`.

string_check: eq / ne (exact), like (reference is a substring of input), ilike (the same, ignoring case);
1.0 or 0.0.

text_similarity, each metric wrapping its usual library:
- fuzzy_match: rapidfuzz `fuzz.ratio` (normalised Indel similarity) / 100.
- bleu: sacrebleu `sentence_bleu` (13a tokenizer, exp smoothing, effective order) / 100.
- gleu: nltk `sentence_gleu` over word/punctuation tokens (case kept, as BLEU).
- meteor: nltk `single_meteor_score` with exact and Porter-stem matching, lower-cased. nltk's synonym
  stage needs WordNet data, which the image does not ship; it is handed a WordNet stand-in with no
  synsets, so the synonym stage matches nothing (METEOR without synonyms).
- rouge_1 .. rouge_5, rouge_l: rouge_score F-measure, no stemming, with a Unicode word tokenizer (the
  library's default drops every non-ASCII letter).
- cosine: cosine of the MiniLM sentence embeddings (`embedding.py`), in [-1, 1]; one forward pass per batch.
Two texts that are both empty score 1.0 under every metric (the metrics are undefined there).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from finetune_api.v1alpha1.graders import StringCheckGrader, TextSimilarityGrader
from finetune_trainer.graders.core import BaseGrader, Result, check_batch, failed, scored, where
from finetune_trainer.graders.embedding import Embedder
from finetune_trainer.graders.templates import MissingFieldError, Template, compile_template

WORDS = re.compile(r"\w+|[^\w\s]")
ROUGE_TYPES = {f"rouge_{n}": f"rouge{n}" for n in range(1, 6)} | {"rouge_l": "rougeL"}


def _pairs(
    input_: Template,
    reference: Template,
    samples: Sequence[Mapping[str, Any]],
    items: Sequence[Mapping[str, Any]],
) -> list[tuple[str, str] | str]:
    """(input, reference) per sample, or the missing-field message for samples that cannot render."""
    check_batch(samples, items)
    out: list[tuple[str, str] | str] = []
    for sample, item in zip(samples, items, strict=True):
        try:
            out.append((input_.render(sample, item), reference.render(sample, item)))
        except MissingFieldError as missing:
            out.append(str(missing))
    return out


class StringCheck(BaseGrader):
    OPERATIONS: dict[str, Callable[[str, str], bool]] = {  # noqa: RUF012 (read-only table)
        "eq": lambda a, b: a == b,
        "ne": lambda a, b: a != b,
        "like": lambda a, b: b in a,
        "ilike": lambda a, b: b.casefold() in a.casefold(),
    }

    def __init__(self, spec: StringCheckGrader) -> None:
        self.name = spec.name
        self.input = compile_template(spec.input, where(spec.name, "input"))
        self.reference = compile_template(spec.reference, where(spec.name, "reference"))
        self.operation = self.OPERATIONS[spec.operation]

    def grade(self, samples: Sequence[Mapping[str, Any]], items: Sequence[Mapping[str, Any]]) -> list[Result]:
        return [
            failed(pair, None) if isinstance(pair, str) else scored(float(self.operation(*pair)), None)
            for pair in _pairs(self.input, self.reference, samples, items)
        ]


class TextSimilarity(BaseGrader):
    def __init__(self, spec: TextSimilarityGrader) -> None:
        self.name = spec.name
        self.input = compile_template(spec.input, where(spec.name, "input"))
        self.reference = compile_template(spec.reference, where(spec.name, "reference"))
        self.metric = spec.evaluation_metric
        self.threshold = spec.pass_threshold
        self.embedder = (
            Embedder.builtin(where(spec.name, "evaluation_metric")) if self.metric == "cosine" else None
        )
        self.score_pair = None if self.embedder else _metric(self.metric)

    def grade(self, samples: Sequence[Mapping[str, Any]], items: Sequence[Mapping[str, Any]]) -> list[Result]:
        pairs = _pairs(self.input, self.reference, samples, items)
        ready = [p for p in pairs if not isinstance(p, str)]
        if self.embedder is not None:
            scores = iter(self.embedder.cosine([a for a, _ in ready], [b for _, b in ready]))
        else:
            assert self.score_pair is not None
            scores = iter(_bounded(self.score_pair, a, b) for a, b in ready)
        return [
            failed(pair, self.threshold) if isinstance(pair, str) else scored(next(scores), self.threshold)
            for pair in pairs
        ]

    def close(self) -> None:
        if self.embedder is not None:
            self.embedder.close()
            self.embedder = None


def _bounded(metric: Callable[[str, str], float], hypothesis: str, reference: str) -> float:
    if not hypothesis.strip() and not reference.strip():
        return 1.0
    return min(1.0, max(0.0, float(metric(hypothesis, reference))))


def _metric(name: str) -> Callable[[str, str], float]:
    if name == "fuzzy_match":
        from rapidfuzz import fuzz  # noqa: PLC0415 (each metric imports only its own library)

        return lambda a, b: fuzz.ratio(a, b) / 100.0
    if name == "bleu":
        import sacrebleu  # noqa: PLC0415

        return lambda a, b: sacrebleu.sentence_bleu(a, [b]).score / 100.0
    if name == "gleu":
        from nltk.translate.gleu_score import sentence_gleu  # type: ignore[import-untyped]  # noqa: PLC0415

        return lambda a, b: sentence_gleu([WORDS.findall(b)], WORDS.findall(a))
    if name == "meteor":
        return _meteor
    return _rouge(ROUGE_TYPES[name])


class _NoSynonyms:
    """Stands in for nltk's WordNet reader (whose data the image lacks): no word has synonyms."""

    def synsets(self, word: str) -> list[Any]:
        return []


def _meteor(hypothesis: str, reference: str) -> float:
    from nltk.translate.meteor_score import single_meteor_score  # type: ignore[import-untyped]  # noqa: PLC0415

    return float(
        single_meteor_score(
            WORDS.findall(reference),
            WORDS.findall(hypothesis),
            wordnet=_NoSynonyms(),
        )
    )


class _UnicodeWords:
    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+", text.casefold())


def _rouge(kind: str) -> Callable[[str, str], float]:
    from rouge_score.rouge_scorer import RougeScorer  # type: ignore[import-untyped]  # noqa: PLC0415

    scorer = RougeScorer([kind], use_stemmer=False, tokenizer=_UnicodeWords())
    return lambda a, b: float(scorer.score(b, a)[kind].fmeasure)
