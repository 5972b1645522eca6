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
        "task": outcome("task", "exact_match", [1.0] * 900 + [0.0] * 100, [1.0] * 880 + [0.0] * 120),
        "toxic": outcome("toxic", "toxicity_rate", [0.0] * 990 + [1.0] * 10, [0.0] * 980 + [1.0] * 20),
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
    assert lines[("task", "no_regression")] == (
        "exact_match 0.9 vs baseline 0.88: better by at least 1.39% (95% upper bound, Tango score) "
        "<= tolerance 1%"
    )


@pytest.mark.parametrize(
    ("suite", "bad", "expected"),
    [
        (
            "task",
            outcome("task", "exact_match", [1.0] * 700 + [0.0] * 300, [1.0] * 700 + [0.0] * 300),
            "task: exact_match 0.7 < min 0.8",
        ),
        (
            "toxic",
            outcome("toxic", "toxicity_rate", [0.0] * 900 + [1.0] * 100, [0.0] * 900 + [1.0] * 100),
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
    assert line.startswith("task: exact_match 0.82 vs baseline 0.97: worse by at most ")
    assert "(95% upper bound, Tango score) > tolerance 1%" in line
    assert line.endswith(
        "on these 100 rows it is worse by 0.15 on average: more rows cannot show it within tolerance"
    )


def paired(rows: int, worse: int, better: int = 0, errors: int = 0) -> SuiteOutcome:
    """Exact match on `rows` rows where both models miss `errors` rows, and the candidate alone misses
    `worse` rows the baseline gets right and gets `better` rows right that the baseline misses."""
    both = rows - errors - worse - better
    cand = [1.0] * both + [0.0] * errors + [0.0] * worse + [1.0] * better
    base = [1.0] * both + [0.0] * errors + [1.0] * worse + [0.0] * better
    return outcome("task", "exact_match", cand, base)


@pytest.mark.parametrize(
    ("name", "task", "verdict", "said"),
    [
        ("identical on 1,000 rows", paired(1000, 0, errors=100), "Passed", "worse by at most 0.27%"),
        ("13% worse on 30 rows", paired(30, 4, errors=2), "Failed", "worse by 0.1333 on average"),
        ("8% worse on 100 rows", paired(100, 8, errors=5), "Failed", "worse by 0.08 on average"),
        ("0.5% worse on 2,000 rows", paired(2000, 20, 10, errors=100), "Passed", "<= tolerance 1%"),
        ("identical on 100 rows", paired(100, 0, errors=10), "Failed", "100 rows cannot show it; about 268"),
        ("2 of 100 flip each way", paired(100, 2, 2, errors=10), "Failed", "100 rows cannot show it; about"),
    ],
)
def test_a_regression_check_passes_only_what_the_rows_show_no_worse(
    name: str, task: SuiteOutcome, verdict: str, said: str
) -> None:
    result = decide(spec(), report(task=task))
    check = next(r for r in result.metrics if (r.suite, r.comparator) == ("task", "no_regression"))
    assert ("Passed" if check.passed else "Failed") == verdict, check.message
    assert said in (check.message or ""), check.message


def test_scores_without_their_pairs_show_nothing_and_fail_closed() -> None:
    unpaired = SuiteOutcome(suite="task", metric="exact_match", value=0.95, baseline=0.5, rows=1000)
    (line,) = failing(decide(spec(), report(task=unpaired)))
    assert line.startswith("task: exact_match 0.95 vs baseline 0.5: no paired per-example scores")


def test_unbounded_scores_are_bounded_by_a_paired_bootstrap() -> None:
    gate = spec(
        suites=[
            {
                "name": "loss",
                "dataset": {"uri": "s3://evals/loss.jsonl"},
                "metric": "eval_loss",
                "threshold": {"max": 5.0},
            }
        ]
    )
    same = [1.5 + (i % 7) * 0.3 for i in range(400)]
    lower = [x - 0.2 for x in same]
    result = decide(gate, EvalReport(suites=[outcome("loss", "eval_loss", lower, same)]))
    assert result.verdict == "Passed"
    assert "(95% upper bound, paired bootstrap) <= tolerance 0.01" in result.metrics[1].message
    worse = [x + 0.2 for x in same]
    result = decide(gate, EvalReport(suites=[outcome("loss", "eval_loss", worse, same)]))
    assert result.verdict == "Failed"
    assert "worse by 0.2 on average" in (result.metrics[1].message or "")


def test_lower_is_better_metrics_regress_upwards() -> None:
    worse = outcome("toxic", "toxicity_rate", [0.0] * 960 + [1.0] * 40, [0.0] * 1000)
    (line,) = failing(decide(spec(), report(toxic=worse)))
    assert line.startswith("toxic: toxicity_rate 0.04 vs baseline 0: worse by at most ")


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
