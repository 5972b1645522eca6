"""win_rate: how often the suite's judge prefers the candidate's reply to the baseline's, with a percentile
bootstrap confidence interval. Owns the comparison rule and the interval; generating the replies and the
gate decision belong to the caller.

The judge is the suite's `judge` grader (compiled with `compile_grader`). Two kinds:

- Pointwise (every grader except a pairwise score_model): each reply is graded alone, as
  `grade(sample_from_text(reply), row)`. The candidate wins an example when its score is higher than the
  baseline's, loses when lower, and ties (0.5) when the two are equal within `TIE` (1e-9).
- Pairwise: a `score_model` whose messages reference both `{{item.response_a}}` and `{{item.response_b}}`.
  Contract of its template: `item` is the dataset row with two fields added, `response_a` and `response_b`
  (the two replies; a row's own fields of those names are replaced), and `sample.output_text` is
  response_a. The judge's score, within its `range` [low, high], says which reply is better: above the
  midpoint (by more than `TIE`) response_a wins, below it response_b wins, at the midpoint it is a tie. A
  judge prompted "reply 1 if A is better, 0 if B is better" with range [0, 1] fits. Because judges favour
  a position, every example is judged twice, (candidate, baseline) as (a, b) and then swapped, and the
  candidate's score is the mean of its two verdicts (win 1, tie 0.5, loss 0): a judge that always prefers
  "a" gives every example 0.5. A template naming only one of the two fields, or a grader other than a
  top-level score_model naming either, is a GraderError.

An example the judge could not grade (`Result.error`, in either reply or either order) counts as a loss for
the candidate: the gate fails closed. `WinRate.errors` counts them and `details` says why.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_api.v1alpha1.graders import Grader, ScoreModelGrader
from finetune_trainer.graders import Compiled, GraderError, Result, compile_grader, sample_from_text
from finetune_trainer.graders.templates import PLACEHOLDER

TIE = 1e-9
PAIR_FIELDS = ("item.response_a", "item.response_b")
RESAMPLES = 2000
CONFIDENCE = 0.95
CELLS = 4_000_000  # resampled indices drawn at once by the bootstrap (bounds its memory)


@dataclass(frozen=True)
class WinRate:
    value: float
    scores: list[float]  # per example: 1 win, 0.5 tie, 0 loss (pairwise: the mean over both orders)
    ci: tuple[float, float]  # percentile bootstrap interval of the mean at CONFIDENCE
    details: list[dict[str, Any]]  # per example: both scores or verdicts, and an error when there was one
    errors: int  # examples the judge could not grade (counted as losses)


def _references(text: str) -> set[str]:
    return {m.group(1) for m in PLACEHOLDER.finditer(text)} & set(PAIR_FIELDS)


def is_pairwise(spec: Grader) -> bool:
    """Whether `spec` judges two replies at once (module docstring); a half-pairwise spec is an error."""
    if isinstance(spec, ScoreModelGrader):
        named = set().union(*(_references(m.content) for m in spec.messages))
        if named and len(named) < len(PAIR_FIELDS):
            raise GraderError(
                f"grader {spec.name!r}: messages: a pairwise judge names both {{{{item.response_a}}}} and "
                f"{{{{item.response_b}}}}; only {{{{{named.pop()}}}}} is there"
            )
        return bool(named)
    if _references(json.dumps(spec.model_dump(mode="json"))):
        raise GraderError(
            f"grader {spec.name!r}: only a score_model judge can compare two replies "
            "({{item.response_a}} and {{item.response_b}}); other graders score one reply at a time"
        )
    return False


def win_rate(
    spec: Grader,
    candidate: Sequence[str],
    baseline: Sequence[str],
    items: Sequence[Mapping[str, Any]],
    *,
    judge: Compiled | None = None,
    scratch: Path | None = None,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> WinRate:
    """The candidate's win rate over the baseline on `items` (the dataset rows the replies answer).

    `judge` is `spec` already compiled (the caller keeps it open); when None it is compiled here, with
    `scratch` for python graders, and closed before returning."""
    if not len(candidate) == len(baseline) == len(items):
        raise ValueError(
            f"win_rate: one candidate and one baseline reply per row needed, got {len(candidate)}, "
            f"{len(baseline)} and {len(items)}"
        )
    if not items:
        raise ValueError("win_rate: no rows to compare on")
    pairwise = is_pairwise(spec)
    with contextlib.ExitStack() as stack:
        if judge is None:
            judge = stack.enter_context(compile_grader(spec, scratch=scratch))
        if pairwise and isinstance(spec, ScoreModelGrader):
            low, high = spec.range
            rows = _pairwise(judge, candidate, baseline, items, (low + high) / 2)
        else:
            rows = _pointwise(judge, candidate, baseline, items)
    scores = [score for score, _ in rows]
    details = [detail for _, detail in rows]
    return WinRate(
        value=sum(scores) / len(scores),
        scores=scores,
        ci=bootstrap_ci(scores, seed=seed, resamples=resamples),
        details=details,
        errors=sum(1 for d in details if "error" in d),
    )


def _compare(first: float, second: float) -> float:
    """1 when `first` is higher, 0 when lower, 0.5 when equal within TIE."""
    if first - second > TIE:
        return 1.0
    if second - first > TIE:
        return 0.0
    return 0.5


def _pointwise(
    judge: Compiled, candidate: Sequence[str], baseline: Sequence[str], items: Sequence[Mapping[str, Any]]
) -> list[tuple[float, dict[str, Any]]]:
    samples = [sample_from_text(r) for r in [*candidate, *baseline]]
    results = judge.grade(samples, [*items, *items])
    rows = []
    for ours, theirs in zip(results[: len(items)], results[len(items) :], strict=True):
        detail: dict[str, Any] = {"candidate": ours.score, "baseline": theirs.score}
        rows.append(_scored(_compare(ours.score, theirs.score), detail, ours, theirs))
    return rows


def _pairwise(
    judge: Compiled,
    candidate: Sequence[str],
    baseline: Sequence[str],
    items: Sequence[Mapping[str, Any]],
    midpoint: float,
) -> list[tuple[float, dict[str, Any]]]:
    forward = [
        {**item, "response_a": c, "response_b": b}
        for item, c, b in zip(items, candidate, baseline, strict=True)
    ]
    swapped = [
        {**item, "response_a": b, "response_b": c}
        for item, c, b in zip(items, candidate, baseline, strict=True)
    ]
    samples = [sample_from_text(i["response_a"]) for i in [*forward, *swapped]]
    results = judge.grade(samples, [*forward, *swapped])
    rows = []
    for ab, ba in zip(results[: len(items)], results[len(items) :], strict=True):
        first = _compare(ab.score, midpoint)  # the candidate is a
        second = 1.0 - _compare(ba.score, midpoint)  # the candidate is b
        detail: dict[str, Any] = {"score_ab": ab.score, "score_ba": ba.score, "verdicts": [first, second]}
        rows.append(_scored((first + second) / 2, detail, ab, ba))
    return rows


def _scored(score: float, detail: dict[str, Any], *results: Result) -> tuple[float, dict[str, Any]]:
    errors = [r.error for r in results if r.error is not None]
    if errors:
        return 0.0, detail | {"error": "; ".join(errors)}
    return score, detail


def bootstrap_ci(
    scores: Sequence[float], *, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `scores`: `resamples` resamples with replacement from a
    numpy generator seeded with `seed`, cut at (1 - confidence) / 2 on each side."""
    import numpy as np  # noqa: PLC0415

    values = np.asarray(scores, dtype=float)
    if values.size == 0:
        raise ValueError("bootstrap_ci: no scores")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    step = max(1, CELLS // values.size)
    for start in range(0, resamples, step):
        count = min(step, resamples - start)
        means[start : start + count] = values[rng.integers(0, values.size, (count, values.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)
