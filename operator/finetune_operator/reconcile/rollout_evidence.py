"""Evidence for rollout decisions: a shadow check's verdict from its counters, and a canary analysis
metric's verdict from its PromQL value. Pure.

A shadow check's scores lie in [0, 1] (1 = win or flagged). From the three counters the model servers
export (samples n, sum of scores, sum of squared scores) come the mean and the sample variance, and the
one-sided bounds mean -/+ z * sqrt(variance / n) with z the normal quantile at the policy's confidence (the
normal approximation to the mean of bounded scores; `minSamples` is at least 10). The threshold is held to
the bound, never to the mean:

- higher is better (threshold.min): passes when the lower bound is at least min; fails when even the upper
  bound is below min;
- lower is better (threshold.max): passes when the upper bound is at most max; fails when even the lower
  bound is above max;
- otherwise, or with fewer than `minSamples` samples, it is undecided: more evidence is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

from finetune_api.serving import (
    GRADED_SAMPLES,
    GRADED_SCORE,
    GRADED_SCORE_SQUARES,
    render_query,
)
from finetune_api.v1alpha1.modeldeployment import (
    SHADOW_HIGHER_IS_BETTER,
    AnalysisMetric,
    ModelDeployment,
    ShadowCheck,
)
from finetune_api.v1alpha1.modeldeployment_status import CheckResult
from finetune_operator.observed_deployment import QueryResult, Sums


@dataclass(frozen=True)
class Evidence:
    samples: int
    mean: float | None = None
    lower: float | None = None
    upper: float | None = None


def evidence(sums: Sums, confidence: float) -> Evidence:
    n = int(sums.samples)
    if n <= 0:
        return Evidence(0)
    mean = sums.total / n
    variance = max(0.0, (sums.squares - n * mean * mean) / (n - 1)) if n > 1 else 0.25
    half = NormalDist().inv_cdf(confidence) * math.sqrt(variance / n)
    return Evidence(n, mean, mean - half, mean + half)


def judge_check(check: ShadowCheck, sums: Sums | None, confidence: float, min_samples: int) -> CheckResult:
    """A shadow check's verdict (`passed` None while undecided) with the numbers it rests on."""
    found = evidence(sums or Sums(), confidence)
    higher = check.metric in SHADOW_HIGHER_IS_BETTER
    limit = check.threshold.min if higher else check.threshold.max
    assert limit is not None  # the API's rules require the bound that fits the metric
    if found.mean is None or found.lower is None or found.upper is None:
        return CheckResult(
            metric=check.metric, samples=0, message=f"no graded samples yet ({min_samples} needed)"
        )
    bound = found.lower if higher else found.upper
    side = "lower" if higher else "upper"
    text = (
        f"{check.metric} {found.mean:.3f} over {found.samples} samples, {side} bound {bound:.3f} at "
        f"{confidence:.0%} confidence, threshold {'min' if higher else 'max'} {limit:g}"
    )
    if higher:
        shown_good, shown_bad = found.lower >= limit, found.upper < limit
    else:
        shown_good, shown_bad = found.upper <= limit, found.lower > limit
    passed: bool | None = None
    if shown_bad:
        passed = False
    elif shown_good and found.samples >= min_samples:
        passed = True
    elif found.samples < min_samples:
        text += f" (needs {min_samples} samples)"
    return CheckResult(
        metric=check.metric,
        samples=found.samples,
        value=round(found.mean, 6),
        bound=round(bound, 6),
        passed=passed,
        message=text,
    )


def shadow_queries(mdep: ModelDeployment, digest: str) -> dict[str, tuple[str, str, str]]:
    """Each shadow check's three sums over the candidate's servers (cumulative for this candidate)."""
    shadow = mdep.spec.rollout.shadow
    if shadow is None:
        return {}
    selector = (
        f'namespace="{mdep.metadata.namespace}",modeldeployment="{mdep.metadata.name}",'
        f'variant="candidate",digest="{digest}"'
    )
    queries: dict[str, tuple[str, str, str]] = {}
    for check in shadow.checks:
        samples, total, squares = (
            f'sum({series}{{{selector},metric="{check.metric}"}})'
            for series in (GRADED_SAMPLES, GRADED_SCORE, GRADED_SCORE_SQUARES)
        )
        queries[check.metric] = (samples, total, squares)
    return queries


def analysis_queries(
    mdep: ModelDeployment, metrics: tuple[AnalysisMetric, ...], stable: str, candidate: str
) -> dict[str, str]:
    values = {
        "namespace": mdep.metadata.namespace or "",
        "modeldeployment": mdep.metadata.name,
        "variant": "candidate",
        "stableDigest": stable,
        "candidateDigest": candidate,
        "interval": mdep.spec.rollout.canary.analysis.interval,
    }
    return {m.name: render_query(m.query, values) for m in metrics}


def judge_metric(metric: AnalysisMetric, result: QueryResult | None) -> tuple[bool | None, str]:
    """(passed, message): None when inconclusive (no data, or the query failed)."""
    if result is None or result.error is not None:
        return None, f"{metric.name}: query failed: {result.error if result else 'not run'}"
    if result.value is None:
        return None, f"{metric.name}: no data"
    low, high = metric.threshold_range.min, metric.threshold_range.max
    inside = (low is None or result.value >= low) and (high is None or result.value <= high)
    wanted = [f"at least {low:g}" if low is not None else "", f"at most {high:g}" if high is not None else ""]
    bounds = " and ".join(text for text in wanted if text)
    verdict = "within" if inside else "outside"
    return inside, f"{metric.name} = {result.value:.4g}, {verdict} the range ({bounds})"
