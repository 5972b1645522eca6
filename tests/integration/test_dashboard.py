"""The chart's Grafana dashboard (helm/finetune-operator/files/dashboard.json), checked with real tools.

Its JSON is type-checked by tsc against Grafana's own types (@grafana/schema, pinned in tests/grafana), so
a misspelt field or a wrong type fails; every PromQL query, with Grafana's variables substituted, is
parsed by promtool as a recording rule; every metric it reads is one docs/metrics.md documents; and the
one-job row reads only the FineTuneJobs the variables select. Each check is also shown to fail on a
dashboard broken on purpose.
"""

from __future__ import annotations

import contextlib
import copy
import http.server
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.grafana import (
    METRICS_DOC,
    documented_metrics,
    load,
    metric_names,
    panels,
    queries,
    recording_rules,
    substitute,
    typecheck,
)
from helpers.processes import free_port
from helpers.prometheus import prometheus, promtool

Dashboard = dict[str, Any]
ROWS = ["Fleet", "One job", "Operator health"]
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def first(dashboard: Dashboard, kind: str) -> dict[str, Any]:
    return next(panel for _, panel in panels(dashboard) if panel["type"] == kind)


# Ways to break the dashboard, each with what tsc's error must name.
BROKEN: dict[str, tuple[Callable[[Dashboard], None], str]] = {
    "unknown_panel_field": (
        lambda d: first(d, "timeseries").update(titel="Loss"),
        "'\"titel\"' does not exist",
    ),
    "unknown_option": (lambda d: first(d, "stat")["options"].update(colourMode="value"), "colourMode"),
    "unknown_enum_value": (
        lambda d: first(d, "timeseries")["options"]["legend"].update(displayMode="lists"),
        "'\"lists\"' is not assignable",
    ),
    "unknown_custom_field": (
        lambda d: first(d, "timeseries")["fieldConfig"]["defaults"]["custom"].update(lineWidht=2),
        "lineWidht",
    ),
    "string_for_a_number": (
        lambda d: first(d, "bargauge")["fieldConfig"]["defaults"].update(min="0"),
        "Type 'string' is not assignable to type 'number'",
    ),
    "misspelt_query_field": (
        lambda d: first(d, "timeseries")["targets"][0].update(legendFromat="{{phase}}"),
        "legendFromat",
    ),
    "unknown_panel_type": (
        lambda d: first(d, "stat").update(type="piechart"),
        "'\"piechart\"' is not assignable",
    ),
    "unknown_option_in_a_collapsed_row": (
        lambda d: d["panels"][0].update(
            collapsed=True,
            panels=[{**first(d, "stat"), "options": {**first(d, "stat")["options"], "colourMode": "value"}}],
        ),
        "colourMode",
    ),
    "variable_refresh_out_of_range": (
        lambda d: d["templating"]["list"][1].update(refresh=5),
        "'5' is not assignable to type 'VariableRefresh",
    ),
}


@pytest.fixture(scope="module")
def dashboard() -> Dashboard:
    return load()


@pytest.fixture(scope="module")
def type_errors(dashboard: Dashboard, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """tsc's errors for the shipped dashboard and for each broken copy, from one tsc run."""
    boards = {"shipped": dashboard}
    for name, (breaks, _) in BROKEN.items():
        broken = copy.deepcopy(dashboard)
        breaks(broken)
        boards[name] = broken
    errors, _ = typecheck(boards, tmp_path_factory.mktemp("grafana-schema"))
    return errors


def test_the_dashboard_satisfies_grafanas_schema(type_errors: dict[str, list[str]]) -> None:
    assert type_errors["shipped"] == []


@pytest.mark.parametrize("name", BROKEN)
def test_the_schema_check_fails_a_broken_dashboard(type_errors: dict[str, list[str]], name: str) -> None:
    _, expected = BROKEN[name]
    assert any(expected in error for error in type_errors[name]), type_errors[name]


def test_identity_rows_and_variables(dashboard: Dashboard) -> None:
    assert (dashboard["uid"], dashboard["title"]) == ("finetune-operator", "Fine-tuning")
    assert [p["title"] for p in dashboard["panels"] if p["type"] == "row"] == ROWS
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    assert variables["namespace"]["query"].startswith("label_values(finetune_operator_jobs")
    assert variables["finetunejob"]["query"].startswith("label_values(finetune_trainer_step{")
    for name in ("namespace", "finetunejob"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == DATASOURCE
        assert variables[name]["multi"]
        assert variables[name]["includeAll"]


def test_every_panel_and_query_uses_the_datasource_variable_and_sets_a_unit(dashboard: Dashboard) -> None:
    for _, panel in panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(target["datasource"] == DATASOURCE for target in panel["targets"]), panel["title"]
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']}: no unit"


def test_every_query_parses(dashboard: Dashboard, tmp_path: Path) -> None:
    found = queries(dashboard)
    assert len(found) >= 20
    for query in found:
        assert "$" not in substitute(query.expr), f"{query.panel}: a variable left unsubstituted"
    rules = tmp_path / "dashboard-rules.yaml"
    rules.write_text(recording_rules(found))
    result = promtool("check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(found)} rules found" in result.stdout


def test_a_query_that_does_not_parse_is_named_by_its_panel(dashboard: Dashboard, tmp_path: Path) -> None:
    broken = copy.deepcopy(dashboard)
    panel = first(broken, "bargauge")
    panel["targets"][0]["expr"] = panel["targets"][0]["expr"].replace(")", "", 1)
    rules = tmp_path / "broken-rules.yaml"
    rules.write_text(recording_rules(queries(broken)))
    result = promtool("check", "rules", str(rules))
    assert result.returncode != 0
    assert f'group "Fleet / {panel["title"]}"' in result.stdout + result.stderr


def test_rates_use_the_rate_interval(dashboard: Dashboard) -> None:
    rates = [
        (query.panel, window)
        for query in queries(dashboard)
        for window in re.findall(r"\b(?:rate|irate)\((?:[^()]|\([^()]*\))*?\[([^\]]+)\]\)", query.expr)
    ]
    assert rates, "no rate() in the dashboard"
    assert [(panel, w) for panel, w in rates if w != "$__rate_interval"] == []


def test_every_metric_is_documented(dashboard: Dashboard) -> None:
    documented = documented_metrics(METRICS_DOC.read_text())
    # The parser reads the contract: plain names, and a histogram's series but not its base name.
    assert "finetune_trainer_mfu" in documented
    assert "finetune_operator_queue_wait_seconds_bucket" in documented
    assert "finetune_operator_queue_wait_seconds" not in documented
    used: dict[str, set[str]] = {}
    for query in queries(dashboard):
        used.setdefault(query.panel, set()).update(metric_names(query.expr))
    assert set().union(*used.values()) >= {"finetune_operator_jobs", "finetune_trainer_loss"}
    assert {panel: names - documented for panel, names in used.items() if names - documented} == {}


def test_one_job_panels_read_only_the_selected_jobs(dashboard: Dashboard) -> None:
    one_job = [query for query in queries(dashboard) if query.row == "One job"]
    assert len({query.panel for query in one_job}) >= 6
    for query in one_job:
        names = metric_names(query.expr)
        selectors = re.findall(r"\b(finetune_[a-z0-9_]+)\{([^}]*)\}", query.expr)
        assert names, f"{query.panel}: reads no metric"
        assert {name for name, _ in selectors} == names, f"{query.panel}: a metric without a selector"
        for name, matchers in selectors:
            assert 'namespace=~"$namespace"' in matchers, f"{query.panel}: {name} not filtered by namespace"
            assert 'finetunejob=~"$finetunejob"' in matchers, f"{query.panel}: {name} not filtered by job"


# --- against a real Prometheus ------------------------------------------------------------------------

PHASES = ("Pending", "ValidatingData", "Training", "Evaluating", "AwaitingApproval", "Promoting", "Succeeded")
TRAINER_LABELS = 'namespace="team-a",finetunejob="sft-a",run_id="r1",method="sft"'


def operator_metrics(elapsed: float) -> str:
    """The operator's series as docs/metrics.md defines them, counters growing with time."""
    n = int(elapsed * 10)
    lines = [
        f'finetune_operator_jobs{{namespace="team-a",phase="{phase}",method="sft"}} '
        f"{ {'Training': 1, 'Succeeded': 2}.get(phase, 0) }"
        for phase in PHASES
    ]
    lines += [
        'finetune_operator_job_phase_transitions_total{namespace="team-a",method="sft",'
        f'from_phase="Promoting",to_phase="Succeeded"}} {n}',
        'finetune_operator_job_failures_total{namespace="team-a",method="sft",'
        f'reason="TrainingFailed"}} {n}',
        f'finetune_operator_gate_verdicts_total{{namespace="team-a",gate="quality",verdict="Failed"}} {n}',
        'finetune_operator_gate_checks_total{namespace="team-a",gate="quality",suite="holdout",'
        f'metric="exact_match",result="failed"}} {n}',
        f'finetune_operator_reconcile_errors_total{{error="KubeError"}} {n}',
        f'finetune_operator_kube_api_errors_total{{verb="patch_status",code="409"}} {n}',
        "finetune_operator_reconcile_loops 1",
        'finetune_operator_build_info{version="0.1.0"} 1',
    ]
    for name, labels in (
        ("finetune_operator_queue_wait_seconds", 'method="sft",queue="gpu",'),
        ("finetune_operator_reconcile_duration_seconds", ""),
    ):
        lines += [f'{name}_bucket{{{labels}le="{le}"}} {n * share}' for le, share in (("1", 1), ("+Inf", 2))]
        lines += [f"{name}_sum{{{labels[:-1]}}} {n}", f"{name}_count{{{labels[:-1]}}} {2 * n}"]
    return "\n".join(lines) + "\n"


def trainer_metrics(now: float) -> str:
    values = {
        "step": 25,
        "total_steps": 100,
        "loss": 1.5,
        "eval_loss": 1.7,
        "tokens_per_second": 1200,
        "eta_seconds": 300,
        "last_step_timestamp_seconds": now,
        "mfu": 0.4,
        "accelerator_memory_allocated_bytes": 2e9,
        "accelerator_memory_peak_bytes": 3e9,
        "accelerator_memory_total_bytes": 8e10,
    }
    return "".join(f"finetune_trainer_{name}{{{TRAINER_LABELS}}} {value}\n" for name, value in values.items())


@contextlib.contextmanager
def exporter(body: Callable[[], str]) -> Iterator[str]:
    """An HTTP server answering /metrics with `body()`; yields its host:port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = body().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_every_query_answers_from_series_shaped_like_the_contract(
    dashboard: Dashboard, tmp_path: Path
) -> None:
    """Each query, run by a real Prometheus over series shaped as docs/metrics.md says, returns data: a label
    it groups or joins by, or a matcher it filters with, that the series lack would leave it empty."""
    start = time.time()
    with (
        exporter(lambda: operator_metrics(time.time() - start)) as operator,
        exporter(lambda: trainer_metrics(time.time())) as trainer,
        prometheus(tmp_path, {"finetune-operator": [operator], "trainer": [trainer]}) as server,
    ):
        server.wait_for(
            "count_over_time(finetune_operator_reconcile_loops[6s]) >= 6"
            " and on () count_over_time(finetune_trainer_step[6s]) >= 6"
        )
        selection = {
            "$__rate_interval": "5s",
            "$__range": "1m",
            "$namespace": "team-a",
            "$finetunejob": "sft-a",
        }
        empty = [
            f"{query.row} / {query.panel} {query.ref}"
            for query in queries(dashboard)
            if not server.query(substitute(query.expr, selection))
        ]
        assert empty == []
        progress = next(q for q in queries(dashboard) if q.panel == "Progress")
        assert [float(s["value"][1]) for s in server.query(substitute(progress.expr, selection))] == [0.25]
        by_phase = next(q for q in queries(dashboard) if q.panel == "Jobs by phase")
        phases = {s["metric"]["phase"]: float(s["value"][1]) for s in server.query(substitute(by_phase.expr))}
        assert (phases["Training"], phases["Succeeded"], phases["Pending"]) == (1, 2, 0)
        other = substitute(progress.expr, {**selection, "$finetunejob": "dpo-b"})
        assert server.query(other) == [], "the one-job row shows a job that was not selected"
