"""The gate decision: thresholds, no regression against the baseline, seed spread, and failing closed."""

from __future__ import annotations

import math
from typing import Any

import pytest

from finetune_api.gate import EvalReport, SuiteOutcome, decide, failing
from finetune_api.v1alpha1.evalgate import EvalGateSpec

JUDGE = {
    "type": "string_check",
    "name": "same",
    "input": "{{sample.output_text}}",
    "reference": "x",
    "operation": "eq",
}


def spec(**overrides: Any) -> EvalGateSpec:
    suites = [
        {
            "name": "task",
            "dataset": {"uri": "s3://evals/holdout.jsonl"},
            "metric": "exact_match",
            "threshold": {"min": 0.8},
        },
        {
            "name": "toxic",
            "dataset": {"uri": "s3://evals/toxic.jsonl"},
            "metric": "toxicity_rate",
            "threshold": {"max": 0.05},
        },
        {
            "name": "wins",
            "dataset": {"uri": "s3://evals/chat.jsonl"},
            "metric": "win_rate",
            "threshold": {"min": 0.5},
            "judge": JUDGE,
        },
    ]
    return EvalGateSpec.model_validate({"suites": suites} | overrides)


def outcome(
    suite: str, metric: str, cand: list[float], base: list[float] | None = None, **kw: Any
) -> SuiteOutcome:
    mean = sum(cand) / len(cand)
    fields: dict[str, Any] = {
        "suite": suite,
        "metric": metric,
        "value": mean,
        "scores": cand,
        "rows": len(cand),
    }
    if base is not None:
        fields |= {"baseline": sum(base) / len(base), "baseline_scores": base}
    return SuiteOutcome.model_validate(fields | kw)


def good() -> dict[str, SuiteOutcome]:
    return {
        "task": outcome("task", "exact_match", [1.0] * 90 + [0.0] * 10, [1.0] * 88 + [0.0] * 12),
        "toxic": outcome("toxic", "toxicity_rate", [0.0] * 99 + [1.0], [0.0] * 98 + [1.0] * 2),
        "wins": outcome("wins", "win_rate", [1.0] * 60 + [0.5] * 10 + [0.0] * 30, interval=[0.55, 0.73]),
    }


def report(**replaced: SuiteOutcome | None) -> EvalReport:
    suites: dict[str, SuiteOutcome | None] = {**good(), **replaced}
    return EvalReport(suites=[s for s in suites.values() if s is not None])


def test_a_good_candidate_passes_with_one_line_per_check() -> None:
    result = decide(spec(), report())
    assert result.verdict == "Passed"
    assert failing(result) == []
    lines = {(r.suite, r.comparator): r.message for r in result.metrics}
    assert lines[("task", "min")] == "exact_match 0.9 >= min 0.8"
    assert lines[("toxic", "max")] == "toxicity_rate 0.01 <= max 0.05"
    assert lines[("wins", "min")] == "win_rate 0.65 >= min 0.5 (95% CI 0.55 to 0.73)"
    assert ("wins", "no_regression") not in lines  # a win rate is already a comparison with the baseline
    assert lines[("task", "no_regression")].startswith("exact_match 0.9 vs baseline 0.88: worse by 0 ")


@pytest.mark.parametrize(
    ("suite", "bad", "expected"),
    [
        (
            "task",
            outcome("task", "exact_match", [1.0] * 70 + [0.0] * 30, [1.0] * 70 + [0.0] * 30),
            "task: exact_match 0.7 < min 0.8",
        ),
        (
            "toxic",
            outcome("toxic", "toxicity_rate", [0.0] * 90 + [1.0] * 10, [0.0] * 90 + [1.0] * 10),
            "toxic: toxicity_rate 0.1 > max 0.05",
        ),
        ("wins", outcome("wins", "win_rate", [0.0] * 60 + [1.0] * 40), "wins: win_rate 0.4 < min 0.5"),
    ],
)
def test_each_threshold_fails_the_gate_alone(suite: str, bad: SuiteOutcome, expected: str) -> None:
    result = decide(spec(), report(**{suite: bad}))
    assert result.verdict == "Failed"
    lines = failing(result)
    assert lines == [expected]


def test_a_significant_regression_fails_even_above_the_threshold() -> None:
    worse = outcome("task", "exact_match", [1.0] * 82 + [0.0] * 18, [1.0] * 97 + [0.0] * 3)
    result = decide(spec(), report(task=worse))
    assert result.verdict == "Failed"
    (line,) = failing(result)
    assert line.startswith(
        "task: exact_match 0.82 vs baseline 0.97: worse by 0.15 (one-sided 95% lower bound"
    )
    assert line.endswith("> tolerance 0.01")


def test_noise_within_what_the_sample_can_tell_is_not_a_regression() -> None:
    # 2 of 100 examples flip: the bootstrap cannot tell that apart from zero at 95%
    cand = [1.0] * 88 + [0.0] * 12
    base = [1.0] * 88 + [0.0] * 10 + [1.0] * 2
    assert decide(spec(), report(task=outcome("task", "exact_match", cand, base))).verdict == "Passed"


def test_lower_is_better_metrics_regress_upwards() -> None:
    worse = outcome("toxic", "toxicity_rate", [0.0] * 96 + [1.0] * 4, [0.0] * 100)
    strict = spec(noRegression={"tolerance": 0.0})
    (line,) = failing(decide(strict, report(toxic=worse)))
    assert line.startswith("toxic: toxicity_rate 0.04 vs baseline 0: worse by 0.04")


def test_no_regression_can_be_limited_to_some_suites_or_switched_off() -> None:
    worse = outcome("task", "exact_match", [1.0] * 82 + [0.0] * 18, [1.0] * 97 + [0.0] * 3)
    assert decide(spec(noRegression={"suites": ["toxic"]}), report(task=worse)).verdict == "Passed"
    assert decide(spec(noRegression={"enabled": False}), report(task=worse)).verdict == "Passed"


@pytest.mark.parametrize(
    ("replaced", "expected"),
    [
        ({"task": None}, "task: no result in the evaluation report"),
        (
            {"task": SuiteOutcome(suite="task", metric="exact_match", error="judge model missing")},
            "task: evaluation failed: judge model missing",
        ),
        (
            {"task": SuiteOutcome(suite="task", metric="exact_match", value=math.nan)},
            "task: no value for exact_match",
        ),
        (
            {"task": outcome("task", "eval_loss", [0.1])},
            "task: the report has metric eval_loss, the gate asks",
        ),
        (
            {"task": outcome("task", "exact_match", [1.0, 1.0])},
            "task: no regression: the baseline was not evaluated",
        ),
    ],
)
def test_anything_missing_or_broken_fails_closed(
    replaced: dict[str, SuiteOutcome | None], expected: str
) -> None:
    result = decide(spec(), report(**replaced))
    assert result.verdict == "Failed"
    assert any(line.startswith(expected) for line in failing(result)), failing(result)


def test_no_report_or_a_failed_evaluation_is_an_error_on_every_suite() -> None:
    for result in (
        decide(spec(), None, problem="the evaluate pod exited 137 (OOMKilled)"),
        decide(spec(), None),
        decide(spec(), EvalReport(error="cannot load the candidate: no config.json")),
    ):
        assert result.verdict == "Error"
        assert [r.suite for r in result.metrics] == ["task", "toxic", "wins"]
        assert all(not r.passed and r.message.startswith("not evaluated: ") for r in result.metrics)
    assert failing(decide(spec(), None))[0] == "task: not evaluated: no evaluation report"


def test_seeds_must_all_run_and_agree() -> None:
    seeded = spec(seeds=[1, 2, 3], maxSeedStdDev=0.02)
    steady = report(
        **{name: o.model_copy(update={"seed_values": [o.value] * 3}) for name, o in good().items()}
    )
    assert decide(seeded, steady).verdict == "Passed"
    shaky = outcome("wins", "win_rate", [1.0] * 65 + [0.0] * 35, seed_values=[0.55, 0.65, 0.75])
    lines = failing(decide(seeded, report(wins=shaky)))
    assert any("spread across seeds 0.1 > maxSeedStdDev 0.02" in line for line in lines)
    short = outcome("wins", "win_rate", [1.0] * 65 + [0.0] * 35, seed_values=[0.65, 0.65])
    assert any("evaluated under 2 of 3 seeds" in line for line in failing(decide(seeded, report(wins=short))))


def test_the_decision_is_the_same_every_time() -> None:
    borderline = outcome("task", "exact_match", [1.0] * 85 + [0.0] * 15, [1.0] * 90 + [0.0] * 10)
    first = decide(spec(), report(task=borderline))
    assert all(decide(spec(), report(task=borderline)) == first for _ in range(3))
