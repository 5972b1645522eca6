"""What `evaluate` reports, and the gate's decision on it: pure, so the operator and `finetune run` agree.

The evaluate pod writes, under its run's staging prefix (`run_layout.StagingLayout`), the per-example records
first (`eval_examples`: prompt, both replies, scores) and the report last (`eval_report`: an `EvalReport`,
per suite the value, the baseline's and the per-example scores).

`decide(spec, report)` turns a report into a `GateResult`, and fails closed: no report, an unreadable one, an
evaluation error, a suite without a result, a metric that is not a finite number, a missing baseline where
one is compared, or a seed that was not run, each fails the gate with a message that says which.

Per suite, one result for the threshold (`min` for higher-is-better metrics, `max` for the others) and,
when the gate has seeds, the spread across them (sample standard deviation at most `maxSeedStdDev`). Then,
for the suites `noRegression` covers (all but win_rate, which is already a comparison with the baseline),
one result for no regression: the candidate fails when a one-sided bootstrap of the mean per-example
degradation (baseline minus candidate for higher-is-better metrics, the reverse otherwise) puts its lower
bound at `confidence` above `tolerance`, that is, when the evaluation shows with that confidence that the
candidate is worse by more than the tolerance. Without paired per-example scores the point values are
compared. The bootstrap is seeded by the suite's name, so a decision is the same every time it is taken.
"""

from __future__ import annotations

import math
import random
import statistics
import zlib
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from finetune_api.base import ApiModel, Name, ShortText, Text, Uri
from finetune_api.v1alpha1.conditions import Verdict
from finetune_api.v1alpha1.evalgate import HIGHER_IS_BETTER, EvalGateSpec, Metric, NoRegression, Suite
from finetune_api.v1alpha1.finetunejob import GateResult, MetricResult

BOOTSTRAP_RESAMPLES = 1000


class SuiteOutcome(ApiModel):
    suite: Name
    metric: Metric
    value: float | None = Field(default=None, description="The candidate's; None when it could not be had.")
    baseline: float | None = Field(default=None, description="The baseline's, on the same rows.")
    scores: list[float] = Field(default_factory=list, description="The candidate's, per example.")
    baseline_scores: list[float] = Field(
        default_factory=list, description="The baseline's, per example, paired with `scores`."
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
    baseline_model: Uri | None = None
    suites: Annotated[list[SuiteOutcome], Field(max_length=32)] = Field(default_factory=list)
    seconds: float = 0.0
    finished_at: datetime | None = None
    error: Text | None = Field(default=None, description="Why the evaluation as a whole failed, if it did.")


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
    problem = _unusable(suite, outcome)
    if problem or outcome is None or outcome.value is None:
        return _failed(suite, f"no regression: {problem or 'no result'}")
    if outcome.baseline is None or not math.isfinite(outcome.baseline):
        return _failed(suite, "no regression: the baseline was not evaluated")
    value, baseline = outcome.value, outcome.baseline
    sign = 1.0 if suite.metric in HIGHER_IS_BETTER else -1.0
    worse_by = sign * (baseline - value)
    paired = len(outcome.scores) == len(outcome.baseline_scores) > 1
    if paired:
        degradation = [sign * (b - c) for c, b in zip(outcome.scores, outcome.baseline_scores, strict=True)]
        bound = lower_bound(degradation, rule.confidence, seed=suite.name)
        passed = bound <= rule.tolerance
        how = f"one-sided {rule.confidence:.0%} lower bound {bound:.4g}"
    else:
        passed = worse_by <= rule.tolerance
        how = "no per-example scores, point values compared"
    message = (
        f"{suite.metric} {value:.4g} vs baseline {baseline:.4g}: worse by {max(worse_by, 0.0) or 0.0:.4g} "
        f"({how}) {'<=' if passed else '>'} tolerance {rule.tolerance:.4g}"
    )
    return MetricResult(
        suite=suite.name,
        metric=str(suite.metric),
        value=value,
        threshold=rule.tolerance,
        comparator="no_regression",
        baseline=baseline,
        passed=passed,
        message=message,
    )


def lower_bound(values: Sequence[float], confidence: float, *, seed: str) -> float:
    """The `1 - confidence` quantile of the bootstrap distribution of the mean of `values`."""
    rng = random.Random(zlib.crc32(seed.encode()))
    n = len(values)
    means = sorted(math.fsum(rng.choices(values, k=n)) / n for _ in range(BOOTSTRAP_RESAMPLES))
    index = min(len(means) - 1, max(0, math.floor((1.0 - confidence) * len(means))))
    return means[index]
