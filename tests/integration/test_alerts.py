"""The chart's alerting rules (helm/finetune-operator/files/alerts.yaml), with Debian's promtool
(tests/prometheus/fetch.sh): they load without warnings, tests/prometheus/alerts_test.yaml passes and shows
every alert both firing and quiet, and the rules cannot drift from docs/metrics.md (metric and label
names), from the API's phases and reasons, or from docs/runbook.md (one section per alert).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from finetune_api.v1alpha1.conditions import Phase, Reason
from finetune_api.v1alpha1.modeldeployment_status import DeploymentReason, RolloutStage
from helpers.prometheus import promtool
from helpers.support import ROOT

RULES = ROOT / "helm" / "finetune-operator" / "files" / "alerts.yaml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "alerts_test.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"
METRICS = ROOT / "docs" / "metrics.md"
RUNBOOK_URL = "https://github.com/finetune-operator/finetune-operator/blob/main/docs/runbook.md#"
SEVERITIES = {"critical", "warning", "info"}
# every trainer series carries these (docs/metrics.md, "Trainer")
TRAINER_LABELS = {"namespace", "finetunejob", "run_id", "method"}
# label values the rules match that come from the API's vocabulary
VOCABULARY = {
    "phase": {p.value for p in Phase},
    "reason": {r.value for r in Reason} | {r.value for r in DeploymentReason},
    "stage": {s.value for s in RolloutStage},
}


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def documented_metrics() -> dict[str, set[str]]:
    """Metric name -> its label names, from the tables of docs/metrics.md."""
    found: dict[str, set[str]] = {}
    for row in re.findall(r"^\| `(finetune_\w+)` \|(.*)$", METRICS.read_text(), re.MULTILINE):
        name, rest = row
        cells = [c.strip() for c in rest.split("|")]
        if name.startswith("finetune_trainer_"):
            found[name] = set(TRAINER_LABELS)
        else:  # Metric | Type | Labels | Meaning
            found[name] = set(re.findall(r"`(\w+)`", cells[1]))
    return found


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    anchor = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return anchor.replace(" ", "-")


def selectors(expr: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """Each `metric{label op "value", ...}` or bare `metric` in a PromQL expression: (metric, {label: (op,
    value)})."""
    found = []
    for match in re.finditer(r"\b(finetune_[\w:]+)(\{([^}]*)\})?", expr):
        matchers = {
            label: (op, value)
            for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', match.group(3) or "")
        }
        found.append((match.group(1), matchers))
    return found


def test_promtool_checks_the_rules_without_warnings() -> None:
    result = promtool("check", "rules", str(RULES))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"SUCCESS: {len(rules())} rules found" in output
    assert "warning" not in output.lower()
    # a `groups:` document: a PrometheusRule's spec and a plain Prometheus rule file alike
    assert set(yaml.safe_load(RULES.read_text())) == {"groups"}


def test_promtool_rule_tests_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases: dict[str, dict[str, int]] = {}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            kind = "firing" if case.get("exp_alerts") else "quiet"
            counts = cases.setdefault(case["alertname"], {"firing": 0, "quiet": 0})
            counts[kind] += 1
            for alert in case.get("exp_alerts") or []:
                assert alert["exp_annotations"]["summary"], case
    names = {alert["alert"] for alert in alerts()}
    assert set(cases) - names == set(), "tests of alerts that do not exist"
    for name in sorted(names):
        assert cases.get(name, {}).get("firing"), f"{name} is never shown firing"
        assert cases.get(name, {}).get("quiet"), f"{name} is never shown quiet"


def test_every_alert_has_a_severity_a_summary_a_description_and_a_runbook() -> None:
    names = [alert["alert"] for alert in alerts()]
    assert len(names) == len(set(names)), "an alert name is used twice"
    for alert in alerts():
        assert alert["labels"]["severity"] in SEVERITIES, alert["alert"]
        annotations = alert["annotations"]
        for key in ("summary", "description", "runbook_url"):
            assert annotations.get(key, "").strip(), f"{alert['alert']} has no {key}"


def test_the_runbook_has_one_section_per_alert_and_every_link_finds_it() -> None:
    headings = re.findall(r"^## (.+)$", RUNBOOK.read_text(), re.MULTILINE)
    assert sorted(headings) == sorted(alert["alert"] for alert in alerts())
    anchors = {github_anchor(h) for h in headings}
    for alert in alerts():
        url = alert["annotations"]["runbook_url"]
        assert url.startswith(RUNBOOK_URL), url
        assert url.removeprefix(RUNBOOK_URL) == github_anchor(alert["alert"]), url
        assert url.removeprefix(RUNBOOK_URL) in anchors, url


def test_the_rules_use_only_documented_metrics_and_labels() -> None:
    documented = documented_metrics()
    assert documented["finetune_operator_job_failures_total"] == {"namespace", "method", "reason"}
    assert documented["finetune_trainer_loss"] == TRAINER_LABELS
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    used = set()
    for rule in rules():
        for metric, matchers in selectors(rule["expr"]):
            used.add(metric)
            # a recording rule keeps the labels of the counter it reads
            source = metric.split(":")[0] + "_total" if metric in recorded else metric
            assert source in documented, f"{rule.get('alert') or rule.get('record')}: {metric}"
            for label, (_, value) in matchers.items():
                assert label in documented[source], f"{metric} has no label {label}"
                allowed = VOCABULARY.get(label)
                if allowed is not None:
                    assert set(filter(None, value.split("|"))) <= allowed, f"{label}={value!r}"
    assert recorded <= used, "a recording rule no alert reads"


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (
            'x + finetune_a_total{reason=~"A|B", phase!=""}',
            [("finetune_a_total", {"reason": ("=~", "A|B"), "phase": ("!=", "")})],
        ),
        ("finetune_b:rate5m offset 5m", [("finetune_b:rate5m", {})]),
    ],
)
def test_selectors_are_read_from_an_expression(
    expr: str, expected: list[tuple[str, dict[str, tuple[str, str]]]]
) -> None:
    assert selectors(expr) == expected


def test_github_anchors() -> None:
    assert github_anchor("FineTuneJobStuckPending") == "finetunejobstuckpending"
    assert github_anchor("Where to look, for every alert") == "where-to-look-for-every-alert"
