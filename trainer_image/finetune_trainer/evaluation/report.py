"""The eval report as one HTML page: the verdict, every gate check, and side-by-side samples per suite.

`render_html` is pure (report, gate result and per-example records in, a string out); `promote` publishes
the page beside the weights, so a reviewer deciding on an approval reads it without any tool. The page is
self-contained: inline CSS, no scripts, no external resources, so it renders the same from S3, a laptop or
an air-gapped console. Everything in it that came from a dataset or a model (prompts, replies, references,
details, suite names) is untrusted and HTML-escaped; a Content-Security-Policy that allows no scripts at
all is the second line of defence, should escaping ever be missed.

Stable hooks for readers and tests: `#verdict` (class `verdict-passed|failed|error`), `#candidate`,
`#baseline`, `table#metrics` (rows `tr.metric`, failing ones also `.failed`), and per suite
`section.samples#samples-<suite>` with `article.sample` (`.differs` where the two replies differ) holding
`.prompt`, `.reply.candidate`, `.reply.baseline`, `.reference` and `.score`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

from finetune_api.gate import EvalReport, SuiteOutcome
from finetune_api.v1alpha1.finetunejob import GateResult, MetricResult

MAX_TEXT = 4000  # characters of one prompt or reply shown; a page must stay readable with long outputs
VERDICT_COLOURS = {"Passed": "#1a7f37", "Failed": "#b42318", "Error": "#b54708"}

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1f2328; background: #f6f8fa; }
header { padding: 20px 28px; background: #fff; border-bottom: 1px solid #d0d7de; }
h1 { font-size: 20px; margin: 0 0 10px; }
h2 { font-size: 17px; margin: 28px 0 6px; }
main { padding: 0 28px 40px; }
.verdict { display: inline-block; padding: 4px 14px; border-radius: 6px; color: #fff; font-weight: 700;
  font-size: 18px; }
dl.models { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 12px 0 0; }
dt { color: #59636e; } dd { margin: 0; font-family: ui-monospace, monospace; word-break: break-all; }
.problem { color: #b42318; font-weight: 600; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { border: 1px solid #d0d7de; padding: 6px 8px; text-align: left; vertical-align: top; }
th { background: #eaeef2; }
td.num { font-family: ui-monospace, monospace; white-space: nowrap; }
tr.failed td { background: #ffebe9; } tr.failed td.passed { color: #b42318; font-weight: 700; }
tr.passed td.passed { color: #1a7f37; font-weight: 700; }
section.samples { margin-top: 8px; }
.suite-meta { color: #59636e; margin: 0 0 8px; }
article.sample { background: #fff; border: 1px solid #d0d7de; border-radius: 6px; padding: 10px 12px;
  margin: 10px 0; }
article.sample.differs { border-left: 4px solid #0969da; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 10px; }
.label { font-weight: 600; color: #59636e; margin: 6px 0 2px; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0; padding: 8px; border-radius: 4px;
  background: #f6f8fa; font: 13px/1.4 ui-monospace, monospace; }
.reply.candidate pre { background: #ddf4ff; } .reply.baseline pre { background: #fff8c5; }
.score { font-family: ui-monospace, monospace; color: #59636e; }
.empty { color: #59636e; font-style: italic; }
"""
_VERDICT_CSS = "".join(
    f".verdict-{verdict.lower()} {{ background: {colour}; }}\n" for verdict, colour in VERDICT_COLOURS.items()
)


def render_html(
    report: EvalReport,
    gate: GateResult,
    examples: list[dict[str, Any]],
    *,
    title: str,
    candidate: str,
    baseline: str | None,
    samples_per_suite: int = 5,
) -> str:
    """The whole page. `examples` are the records of `eval/examples.jsonl`, in any order and of any
    quality: a missing or mistyped field shows as empty rather than failing the promotion."""
    by_suite: dict[str, list[Mapping[str, Any]]] = {}
    for record in examples:
        if isinstance(record, Mapping):
            by_suite.setdefault(str(record.get("suite", "")), []).append(record)
    outcomes = {outcome.suite: outcome for outcome in report.suites}
    suites = _ordered([m.suite for m in gate.metrics], outcomes, by_suite)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # No scripts, no fetches: only the inline stylesheet and data: images may load.
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}{_VERDICT_CSS}</style></head><body>",
        _header(report, gate, title=title, candidate=candidate, baseline=baseline),
        "<main>",
        '<h2 id="metrics-heading">Gate checks</h2>',
        _metrics_table(gate.metrics),
    ]
    for suite in suites:
        picked = pick_samples(by_suite.get(suite, []), samples_per_suite)
        parts.append(_samples(suite, outcomes.get(suite), picked))
    parts += ["</main></body></html>", ""]
    return "\n".join(parts)


def pick_samples(records: Sequence[Mapping[str, Any]], count: int) -> list[Mapping[str, Any]]:
    """The first `count` records by index, those whose replies differ from the baseline's first: where
    the two models agree there is nothing for a reviewer to compare."""
    ordered = sorted(records, key=_index)
    differing = [r for r in ordered if _differs(r)]
    same = [r for r in ordered if not _differs(r)]
    return sorted((differing + same)[: max(count, 0)], key=_index)


def _header(report: EvalReport, gate: GateResult, *, title: str, candidate: str, baseline: str | None) -> str:
    verdict = gate.verdict
    failed = sum(not m.passed for m in gate.metrics)
    summary = f"{len(gate.metrics) - failed} of {len(gate.metrics)} checks passed"
    rows = [("Candidate", "candidate", candidate), ("Baseline", "baseline", baseline or "none")]
    if report.checkpoint:
        rows.append(("Checkpoint", "checkpoint", report.checkpoint))
    if gate.evaluated_at or report.finished_at:
        rows.append(("Evaluated", "evaluated-at", str(gate.evaluated_at or report.finished_at)))
    if report.seconds:
        rows.append(("Duration", "duration", f"{report.seconds:.0f} s"))
    if gate.report_uri:
        rows.append(("Report", "report-uri", gate.report_uri))
    items = "".join(f'<dt>{_e(label)}</dt><dd id="{key}">{_e(value)}</dd>' for label, key, value in rows)
    error = f'<p id="report-error" class="problem">{_e(report.error)}</p>' if report.error else ""
    return (
        f'<header id="summary"><h1 id="title">{_e(title)}</h1>'
        f'<span id="verdict" class="verdict verdict-{verdict.lower()}">{_e(verdict)}</span> '
        f'<span id="verdict-summary">{_e(summary)}</span>'
        f'<dl class="models" id="models">{items}</dl>{error}</header>'
    )


def _metrics_table(metrics: Iterable[MetricResult]) -> str:
    head = "".join(
        f"<th>{name}</th>"
        for name in ("Suite", "Metric", "Value", "Threshold", "Baseline", "Passed", "Message")
    )
    rows = []
    for m in metrics:
        state = "passed" if m.passed else "failed"
        rows.append(
            f'<tr class="metric {state}" data-suite="{_e(m.suite)}" data-metric="{_e(m.metric)}">'
            f"<td>{_e(m.suite)}</td><td>{_e(m.metric)}</td>"
            f'<td class="num value">{_num(m.value)}</td>'
            f'<td class="num threshold">{_e(_threshold(m))}</td>'
            f'<td class="num baseline">{_num(m.baseline)}</td>'
            f'<td class="passed">{"yes" if m.passed else "no"}</td>'
            f'<td class="message">{_e(m.message or "")}</td></tr>'
        )
    if not rows:
        rows.append('<tr class="metric failed"><td colspan="7">the gate checked nothing</td></tr>')
    return f'<table id="metrics"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _threshold(m: MetricResult) -> str:
    if m.threshold is None:
        return "—"
    bound = _num(m.threshold)
    if m.comparator == "min":
        return f"≥ {bound}"
    if m.comparator == "max":
        return f"≤ {bound}"
    if m.comparator == "no_regression":
        return f"no regression, tolerance {bound}"
    return bound


def _samples(suite: str, outcome: SuiteOutcome | None, picked: Sequence[Mapping[str, Any]]) -> str:
    meta = []
    if outcome is not None:
        meta.append(
            f"metric {outcome.metric}, value {_num(outcome.value)}, baseline {_num(outcome.baseline)}"
        )
        meta.append(f"{outcome.rows} rows")
        if outcome.scorer:
            meta.append(f"scored by {outcome.scorer}")
        if outcome.error:
            meta.append(f"error: {outcome.error}")
    body = "".join(_sample(record) for record in picked) or '<p class="empty">no examples recorded</p>'
    return (
        f'<section class="samples" id="samples-{_e(_slug(suite))}" data-suite="{_e(suite)}">'
        f"<h2>Samples: {_e(suite)}</h2>"
        f'<p class="suite-meta">{_e("; ".join(meta))}</p>{body}</section>'
    )


def _sample(record: Mapping[str, Any]) -> str:
    differs = " differs" if _differs(record) else ""
    reference = record.get("reference")
    details = record.get("details")
    parts = [
        f'<article class="sample{differs}" data-index="{_e(str(record.get("index", "")))}">',
        f'<div class="label">Prompt #{_e(str(record.get("index", "?")))}</div>',
        f'<pre class="prompt">{_text(record.get("prompt"))}</pre>',
        '<div class="pair">',
        _reply("candidate", "Candidate", record.get("candidate"), record.get("score")),
        _reply("baseline", "Baseline", record.get("baseline"), record.get("baseline_score")),
        "</div>",
    ]
    if reference is not None:
        parts.append(f'<div class="label">Reference</div><pre class="reference">{_text(reference)}</pre>')
    if isinstance(details, Mapping) and details:
        shown = json.dumps(details, ensure_ascii=False, default=str, sort_keys=True)
        parts.append(f'<div class="label">Details</div><pre class="details">{_text(shown)}</pre>')
    parts.append("</article>")
    return "".join(parts)


def _reply(side: str, label: str, text: object, score: object) -> str:
    body = (
        f"<pre>{_text(text)}</pre>" if text is not None else f'<p class="empty">no {side} reply recorded</p>'
    )
    return (
        f'<div class="reply {side}"><div class="label">{label} '
        f'<span class="score">score {_num(score)}</span></div>{body}</div>'
    )


def _ordered(
    gate_suites: Iterable[str], outcomes: Mapping[str, SuiteOutcome], examples: Mapping[str, object]
) -> list[str]:
    """The gate's suites in its order, then any the report or the records add (a suite with no check
    still shows its samples: the reviewer sees everything that was evaluated)."""
    return list(dict.fromkeys([*gate_suites, *outcomes, *examples]))


def _differs(record: Mapping[str, Any]) -> bool:
    base, cand = record.get("baseline"), record.get("candidate")
    return base is not None and str(base).strip() != str(cand if cand is not None else "").strip()


def _index(record: Mapping[str, Any]) -> tuple[bool, int]:
    """Records by their index; one without an integer index goes last."""
    value = record.get("index")
    if isinstance(value, int) and not isinstance(value, bool):
        return (False, value)
    return (True, 0)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name) or "unnamed"


def _num(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—"
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _text(value: object) -> str:
    text = "" if value is None else str(value)
    if len(text) > MAX_TEXT:
        text = f"{text[:MAX_TEXT]}… ({len(text) - MAX_TEXT} more characters)"
    return _e(text)


def _e(value: str) -> str:
    return escape(value, quote=True)
