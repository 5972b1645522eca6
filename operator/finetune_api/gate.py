"""What `evaluate` reports, and the gate's decision on it: pure, so the operator and `finetune run` agree.

The evaluate pod writes, under its run's staging prefix (`run_layout.StagingLayout`), the per-example records
first (`eval_examples`: prompt, both replies, scores) and the report last (`eval_report`: an `EvalReport`,
per suite the value, the baseline's and the per-example scores).

`verdict_id` names a verdict by what it judged, for approvals to name it. `decide(spec, report)` turns a
report into a `GateResult`, and fails closed: no report, an unreadable one, an
evaluation error, a suite without a result, a metric that is not a finite number, a missing baseline where
one is compared, or a seed that was not run, each fails the gate with a message that says which.

Per suite, one result for the threshold (`min` for higher-is-better metrics, `max` for the others) and,
when the gate has seeds, the spread across them (sample standard deviation at most `maxSeedStdDev`). Then,
for the suites `noRegression` covers (all but win_rate, which is already a comparison with the baseline),
one result for non-inferiority (failing with the report's `baseline_error` when the baseline could not
be compared): the candidate passes only when it is shown no worse, that is when the
one-sided upper confidence bound (at `confidence`) of the mean per-example degradation (baseline minus
candidate for higher-is-better metrics, the reverse otherwise) is at most `tolerance` (`upper_bound`:
Tango's score bound for paired scores in [0, 1], a paired bootstrap for unbounded ones). A suite too small
to show it fails closed, saying roughly how many rows would, at the differences observed; without paired
per-example scores nothing is shown and the check fails. The bootstrap is seeded by the suite's name, so
a decision is the same every time it is taken.
"""

from __future__ import annotations

import hashlib
import math
import random
import statistics
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from statistics import NormalDist
from typing import Annotated, Literal

from pydantic import Field

from finetune_api.base import ApiModel, Name, ShortText, Text, Uri
from finetune_api.v1alpha1.conditions import Verdict
from finetune_api.v1alpha1.evalgate import HIGHER_IS_BETTER, RATES, EvalGateSpec, Metric, NoRegression, Suite
from finetune_api.v1alpha1.finetunejob import GateResult, MetricResult

BOOTSTRAP_RESAMPLES = 10_000
MAX_ROWS = 10_000_000


class SuiteOutcome(ApiModel):
    suite: Name
    metric: Metric
    value: float | None = Field(default=None, description="The candidate's; None when it could not be had.")
    baseline: float | None = Field(default=None, description="The baseline's, on the same rows.")
    scores: list[float] = Field(default_factory=list, description="The candidate's, per example.")
    baseline_scores: list[float] = Field(
        default_factory=list, description="The baseline's, per example, paired with `scores`."
    )
    baseline_error: Text | None = Field(
        default=None, description="Why the baseline could not be compared on this suite, if it could not."
    )
    seed_values: list[float] = Field(default_factory=list, description="The candidate's value per seed.")
    interval: Annotated[list[float], Field(min_length=2, max_length=2)] | None = Field(
        default=None, description="95% bootstrap confidence interval of `value` (win_rate)."
    )
    rows: Annotated[int, Field(ge=0)] = 0
    scorer: ShortText | None = Field(
        default=None, description='What judged the replies, e.g. "lexicon fallback (...)" or a model URI.'
    )
    error: Text | None = None


class EvalReport(ApiModel):
    checkpoint: Uri | None = None
    checkpoint_digest: ShortText | None = Field(
        default=None, description="sha256 over the judged checkpoint's files (`tree_digest`)."
    )
    baseline_model: Uri | None = None
    suites: Annotated[list[SuiteOutcome], Field(max_length=32)] = Field(default_factory=list)
    seconds: float = 0.0
    finished_at: datetime | None = None
    error: Text | None = Field(default=None, description="Why the evaluation as a whole failed, if it did.")


def verdict_id(checkpoint: str, report: str) -> str:
    """The id an approval names: a digest of what was judged (the checkpoint's digest, or its URI when the
    report has none) and of the report's bytes, so a new checkpoint or a new evaluation is a new verdict."""
    return "v-" + hashlib.sha256(f"{checkpoint}\n{report}".encode()).hexdigest()[:16]


def tree_digest(files: Sequence[tuple[str, str]]) -> str:
    """One digest for a folder from (relative path, sha256 hex) of each file, whatever their order."""
    lines = "".join(f"{path}\t{sha}\n" for path, sha in sorted(files))
    return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


def decide(
    spec: EvalGateSpec, report: EvalReport | None, *, problem: str | None = None, at: datetime | None = None
) -> GateResult:
    """The verdict on `report` (None when there is none; `problem` says why it could not be had)."""
    why = (
        problem or (None if report is None else report.error) or (None if report else "no evaluation report")
    )
    if report is None or why:
        return GateResult(
            verdict=Verdict.ERROR,
            metrics=[_failed(suite, f"not evaluated: {why}") for suite in spec.suites],
            evaluated_at=at,
        )
    outcomes = {outcome.suite: outcome for outcome in report.suites}
    results: list[MetricResult] = []
    for suite in spec.suites:
        outcome = outcomes.get(suite.name)
        results.append(_threshold(suite, outcome, spec))
        if _compared(spec.no_regression, suite):
            results.append(_no_regression(suite, outcome, spec.no_regression))
    verdict = Verdict.PASSED if all(r.passed for r in results) else Verdict.FAILED
    return GateResult(verdict=verdict, metrics=results, evaluated_at=at)


def failing(result: GateResult) -> list[str]:
    """One line per failed check, for a condition message."""
    return [f"{r.suite}: {r.message}" for r in result.metrics if not r.passed]


def _failed(suite: Suite, message: str) -> MetricResult:
    return MetricResult(suite=suite.name, metric=str(suite.metric), passed=False, message=message)


def _unusable(suite: Suite, outcome: SuiteOutcome | None) -> str | None:
    if outcome is None:
        return "no result in the evaluation report"
    if outcome.metric != suite.metric:
        return f"the report has metric {outcome.metric}, the gate asks for {suite.metric}"
    if outcome.error:
        return f"evaluation failed: {outcome.error}"
    if outcome.value is None or not math.isfinite(outcome.value):
        return f"no value for {suite.metric}"
    return None


def _threshold(suite: Suite, outcome: SuiteOutcome | None, spec: EvalGateSpec) -> MetricResult:
    problem = _unusable(suite, outcome)
    if problem or outcome is None or outcome.value is None:
        return _failed(suite, problem or "no result")
    value, bound = outcome.value, suite.threshold
    if bound.min is not None:
        comparator: Literal["min", "max"] = "min"
        threshold, passed = bound.min, value >= bound.min
        message = f"{suite.metric} {value:.4g} {'>=' if passed else '<'} min {bound.min:.4g}"
    else:
        comparator, threshold = "max", bound.max if bound.max is not None else math.inf
        passed = value <= threshold
        message = f"{suite.metric} {value:.4g} {'<=' if passed else '>'} max {threshold:.4g}"
    if outcome.interval:
        message += f" (95% CI {outcome.interval[0]:.4g} to {outcome.interval[1]:.4g})"
    if spec.seeds:
        spread = _seed_spread(outcome.seed_values, spec)
        if spread:
            passed = False
            message += f"; {spread}"
    return MetricResult(
        suite=suite.name,
        metric=str(suite.metric),
        value=value,
        threshold=threshold,
        comparator=comparator,
        baseline=outcome.baseline,
        passed=passed,
        message=message,
    )


def _seed_spread(values: Sequence[float], spec: EvalGateSpec) -> str | None:
    if len(values) != len(spec.seeds) or not all(math.isfinite(v) for v in values):
        return f"evaluated under {len(values)} of {len(spec.seeds)} seeds"
    deviation = statistics.stdev(values)
    if deviation > spec.max_seed_std_dev:
        return f"spread across seeds {deviation:.4g} > maxSeedStdDev {spec.max_seed_std_dev:.4g}"
    return None


def _compared(rule: NoRegression, suite: Suite) -> bool:
    in_scope = rule.suites is None or suite.name in rule.suites
    return rule.enabled and in_scope and suite.metric != Metric.WIN_RATE


def _no_regression(suite: Suite, outcome: SuiteOutcome | None, rule: NoRegression) -> MetricResult:
    """Passes only when the candidate is shown no worse than the baseline by more than the tolerance."""
    problem = _unusable(suite, outcome)
    if problem or outcome is None or outcome.value is None:
        return _failed(suite, f"no regression: {problem or 'no result'}")
    if outcome.baseline is None or not math.isfinite(outcome.baseline):
        why = f": {outcome.baseline_error}" if outcome.baseline_error else ""
        return _failed(suite, f"no regression: the baseline was not evaluated{why}")
    value, baseline = outcome.value, outcome.baseline
    shown = _percent if suite.metric in RATES else _plain
    head = f"{suite.metric} {value:.4g} vs baseline {baseline:.4g}"
    pairs = len(outcome.scores) == len(outcome.baseline_scores) > 1
    if not pairs or not all(math.isfinite(x) for x in (*outcome.scores, *outcome.baseline_scores)):
        return _result(
            suite,
            outcome,
            rule,
            False,
            f"{head}: no paired per-example scores, so no "
            "regression can be shown absent; the evaluation must score each row for both models",
        )
    sign = 1.0 if suite.metric in HIGHER_IS_BETTER else -1.0
    degradation = [sign * (b - c) for c, b in zip(outcome.scores, outcome.baseline_scores, strict=True)]
    bounded = all(0.0 <= x <= 1.0 for x in (*outcome.scores, *outcome.baseline_scores))
    bound = upper_bound(degradation, rule.confidence, seed=suite.name, bounded=bounded)
    passed = bound.value <= rule.tolerance
    at_most = (
        f"better by at least {shown(-bound.value)}"
        if bound.value < 0
        else f"worse by at most {shown(bound.value)}"
    )
    message = (
        f"{head}: {at_most} ({rule.confidence:.0%} upper bound, {bound.method}) "
        f"{'<=' if passed else '>'} tolerance {shown(rule.tolerance)}"
    )
    if not passed:
        message += f"; {_rows_needed(degradation, rule, bound)}"
    return _result(suite, outcome, rule, passed, message)


def _result(
    suite: Suite, outcome: SuiteOutcome, rule: NoRegression, passed: bool, message: str
) -> MetricResult:
    return MetricResult(
        suite=suite.name,
        metric=str(suite.metric),
        value=outcome.value,
        threshold=rule.tolerance,
        comparator="no_regression",
        baseline=outcome.baseline,
        passed=passed,
        message=message,
    )


def _percent(x: float) -> str:
    return f"{100 * x:.3g}%"


def _plain(x: float) -> str:
    return f"{x:.4g}"


@dataclass(frozen=True)
class Bound:
    value: float  # the upper confidence bound of the mean per-row degradation
    method: str  # how it was computed, as the message names it
    estimate: float  # the observed mean degradation
    discordance: tuple[float, float] = (0.0, 0.0)  # per row, against and for the candidate (Tango only)


def upper_bound(degradation: Sequence[float], confidence: float, *, seed: str, bounded: bool) -> Bound:
    """The one-sided upper confidence bound of the mean of `degradation` (baseline minus candidate per
    row, oriented so that positive is worse). When every score lies in [0, 1] (`bounded`: rates, exact
    match, a grader's normalised score) it is Tango's score bound for paired proportions, each row counting
    max(0, d) as discordance against the candidate and max(0, -d) for it: exact for binary scores, and for
    fractional ones conservative, since |d| >= d**2 over-states the variance. It stays honest where every
    row agrees: 48 rows without a single difference bound the degradation at 5.3%, not 0. Unbounded
    scores (eval_loss) get a paired percentile bootstrap with BOOTSTRAP_RESAMPLES resamples."""
    n = len(degradation)
    estimate = math.fsum(degradation) / n
    if bounded:
        worse = math.fsum(max(0.0, d) for d in degradation)
        better = math.fsum(max(0.0, -d) for d in degradation)
        bound = tango_upper(worse, better, n, confidence)
        return Bound(bound, "Tango score", estimate, (worse / n, better / n))
    rng = random.Random(zlib.crc32(seed.encode()))
    means = sorted(math.fsum(rng.choices(degradation, k=n)) / n for _ in range(BOOTSTRAP_RESAMPLES))
    index = min(len(means) - 1, max(0, math.ceil(confidence * len(means)) - 1))
    return Bound(max(means[index], estimate), "paired bootstrap", estimate)


def tango_upper(worse: float, better: float, n: float, confidence: float) -> float:
    """Upper bound of p(worse) - p(better) over `n` paired rows (Tango 1998, Stat Med 17:891): the largest
    difference its score test does not reject at one-sided `confidence`."""
    z = NormalDist().inv_cdf(confidence)
    observed = (worse - better) / n

    def score(delta: float) -> float:
        a = 2 * n
        b = -worse - better + (2 * n - worse + better) * delta
        c = -better * delta * (1 - delta)
        q = (math.sqrt(max(0.0, b * b - 4 * a * c)) - b) / (2 * a)
        variance = n * (2 * q + delta * (1 - delta))
        return (worse - better - n * delta) / math.sqrt(variance) if variance > 0 else 0.0

    low, high = observed, 1.0
    if score(high - 1e-12) >= -z:
        return 1.0
    for _ in range(100):  # the score falls as delta rises: bisect for score(delta) = -z
        middle = (low + high) / 2
        low, high = (middle, high) if score(middle) >= -z else (low, middle)
    return high


def _rows_needed(degradation: Sequence[float], rule: NoRegression, bound: Bound) -> str:
    """Roughly how many rows would show the candidate within tolerance, at the differences observed."""
    n = len(degradation)
    if bound.estimate >= rule.tolerance:
        return (
            f"on these {n} rows it is worse by {bound.estimate:.4g} on average: more rows cannot show it "
            "within tolerance"
        )
    if bound.method == "Tango score":
        worse, better = bound.discordance

        def fits(rows: int) -> bool:
            return tango_upper(worse * rows, better * rows, rows, rule.confidence) <= rule.tolerance

        high = n
        while high < MAX_ROWS and not fits(high):
            high *= 2
        low = high // 2
        while high - low > max(1, low // 100):
            middle = (low + high) // 2
            low, high = (low, middle) if fits(middle) else (middle, high)
        needed = high
    else:  # the bound's half-width shrinks as 1/sqrt(rows)
        needed = math.ceil(n * ((bound.value - bound.estimate) / (rule.tolerance - bound.estimate)) ** 2)
    if needed >= MAX_ROWS:
        return f"{n} rows cannot show it; at the differences observed no practical suite could"
    return f"{n} rows cannot show it; about {needed:,} would, at the differences observed"
