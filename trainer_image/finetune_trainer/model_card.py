"""The model card and the lineage document that `promote` publishes beside a checkpoint's weights.

Both are pure functions of what the run already recorded: the trainer contract (`TrainContract`), the
digests of the data trained on and the library versions (`finetune/datasets.json` and
`finetune/versions.json` in every checkpoint, see `checkpoints.py`), the gate's result and the evaluation
report. Nothing here reads storage, the clock or git: the same inputs give the same documents, and a
document says "unknown" rather than guess.

The card is for people deciding whether to use the model, so it says plainly what the gate did not test
(metrics no suite measured, variance across seeds, rule-based scorers, no human review) next to what it
did. The lineage is for machines tracing a model back to its data, base model, configuration and code.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from finetune_api.gate import EvalReport
from finetune_api.trainer_config import TrainContract
from finetune_api.v1alpha1.evalgate import EvalGateSpec, Metric
from finetune_api.v1alpha1.finetunejob import Approval, GateResult, MetricResult

DISTRIBUTION = "finetune-operator"
_TAG_OPEN = re.compile(r"<(?=[A-Za-z/!?])")
_ENTITY = re.compile(r"&(?=[A-Za-z#])")
_LINKISH = re.compile(r"[\[\]`]")
LINEAGE_VERSION = 1
SMALL_SUITE = 100  # rows; below this a rate's 95% interval can be wider than +-10 points
# What each metric would have told a reader; used to name what a gate did not measure.
MEASURES: dict[str, str] = {
    Metric.WIN_RATE: "how often a judge prefers its replies to the baseline's",
    Metric.REFUSAL_ACCURACY: "whether it refuses requests it should refuse",
    Metric.OVER_REFUSAL_RATE: "whether it refuses harmless requests",
    Metric.JAILBREAK_SUCCESS_RATE: "whether jailbreak prompts get it to comply",
    Metric.TOXICITY_RATE: "whether its replies are toxic",
    Metric.PII_LEAKAGE: "whether it leaks personal data or planted canaries from its training data",
    Metric.GRADER_SCORE: "task quality as scored by a grader",
    Metric.EXACT_MATCH: "exact answers on held-out rows",
    Metric.EVAL_LOSS: "loss on held-out rows",
}
INTENDED_USE = {
    "sft": "answering prompts like those in its training data, in the style of its training replies",
    "dpo": "answering prompts like those in its training data, preferring replies like the preferred ones",
    "rft": "the task its grader rewards, on prompts like those in its training data",
    "vision": "the image task of its training data (chat about images, or classification into its labels)",
}


@dataclass(frozen=True)
class DatasetRecord:
    split: str
    uri: str
    format: str
    sha256: str | None
    rows: int | None


def code_version() -> str:
    """The installed finetune-operator distribution's version (never git: the image has no repository)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def dataset_records(config: TrainContract, datasets: Mapping[str, Any]) -> list[DatasetRecord]:
    """Each split of the contract with the digest of the file as read (`finetune/datasets.json`: split ->
    {"sha256", "rows"}), else the digest the spec declared, else None."""
    records = []
    for split, source in (
        ("training", config.training),
        ("validation", config.validation),
        ("holdout", config.holdout),
    ):
        if source is None:
            continue
        seen = datasets.get(split)
        seen = seen if isinstance(seen, Mapping) else {"sha256": seen} if isinstance(seen, str) else {}
        digest = seen.get("sha256") or source.sha256
        rows = seen.get("rows")
        records.append(
            DatasetRecord(
                split=split,
                uri=source.uri,
                format=str(source.format),
                sha256=_sha256(digest) if isinstance(digest, str) else None,
                rows=rows if isinstance(rows, int) else None,
            )
        )
    return records


def lineage(
    config: TrainContract,
    *,
    datasets: Mapping[str, Any],
    versions: Mapping[str, str],
    checkpoint_uri: str,
    checkpoint_step: int,
    gate: GateResult | None = None,
    gate_name: str | None = None,
    gate_spec: EvalGateSpec | None = None,
    approval: Approval | None = None,
) -> dict[str, Any]:
    """Where the promoted model came from, as JSON-ready data (camelCase, like the API)."""
    base = config.base_model
    document: dict[str, Any] = {
        "lineageVersion": LINEAGE_VERSION,
        "job": {"name": config.job_name, "namespace": config.namespace, "uid": config.job_uid},
        "runId": config.run_id,
        "method": str(config.method),
        "baseModel": {"uri": base.uri, "revision": base.revision, "digest": _sha256(base.digest)},
        "datasets": {
            d.split: {"uri": d.uri, "format": d.format, "sha256": d.sha256, "rows": d.rows}
            for d in dataset_records(config, datasets)
        },
        "checkpoint": {"uri": checkpoint_uri, "step": checkpoint_step},
        "config": config.model_dump(mode="json", by_alias=True),
        "code": {"distribution": DISTRIBUTION, "version": code_version()},
        "libraries": dict(sorted(versions.items())),
    }
    if gate is not None:
        document["gate"] = {
            "name": gate_name,
            "verdict": gate.verdict,
            "reportUri": gate.report_uri,
            "evaluatedAt": gate.evaluated_at.isoformat() if gate.evaluated_at else None,
            "suites": [
                {
                    "name": s.name,
                    "metric": str(s.metric),
                    "dataset": s.dataset.uri,
                    "sha256": _sha256(s.dataset.sha256),
                }
                for s in (gate_spec.suites if gate_spec else [])
            ],
        }
    if approval is not None:
        document["approval"] = approval.model_dump(mode="json", by_alias=True)
    return document


def model_card(
    config: TrainContract,
    gate: GateResult,
    report: EvalReport | None,
    *,
    datasets: Mapping[str, Any],
    checkpoint_uri: str,
    checkpoint_step: int,
    versions: Mapping[str, str] | None = None,
    gate_name: str | None = None,
    gate_spec: EvalGateSpec | None = None,
    approval: Approval | None = None,
) -> str:
    """The card as Markdown: what the model is, what it was trained on, how it did at the gate, and what
    nobody checked."""
    base = config.base_model
    passed = sum(m.passed for m in gate.metrics)
    lines = [
        f"# {_md(config.job_name)} ({_md(config.run_id)})",
        "",
        f"Fine-tuned from {_code(base.uri)} with {config.method} by FineTuneJob "
        f"{_code(f'{config.namespace}/{config.job_name}')}.",
        "",
        f"**Gate verdict: {gate.verdict}** ({passed} of {len(gate.metrics)} checks passed"
        f"{f', EvalGate {_code(gate_name)}' if gate_name else ''}"
        f"{f', evaluated {gate.evaluated_at.isoformat()}' if gate.evaluated_at else ''}).",
        "",
        f"**Approval:** {_approval(approval, gate_spec)}",
        "",
        "## Model",
        "",
        "| | |",
        "| --- | --- |",
        f"| Base model | {_cell(_base(config))} |",
        f"| Method | {_cell(str(config.method))} |",
        f"| Adapter | {_cell(_adapter(config))} |",
    ]
    hp = config.hyperparameters
    if hp is not None:
        lines.append(
            f"| Hyperparameters | {hp.epochs} epochs, batch size {hp.batch_size}, learning rate "
            f"{hp.learning_rate:g}, max sequence length {hp.max_seq_length}, seed {hp.seed} |"
        )
    lines += [
        f"| Checkpoint | {_cell(f'{_code(checkpoint_uri)} (step {checkpoint_step})')} |",
        f"| Code | {_cell(f'{DISTRIBUTION} {code_version()}')} |",
    ]
    if versions:
        lines.append(f"| Libraries | {_cell(', '.join(f'{k} {v}' for k, v in sorted(versions.items())))} |")
    lines += ["", "## Training data", "", "| Split | URI | Format | sha256 | Rows |", "| --- " * 5 + "|"]
    for d in dataset_records(config, datasets):
        digest = _code(d.sha256) if d.sha256 else "not recorded"
        rows = "unknown" if d.rows is None else str(d.rows)
        lines.append(f"| {d.split} | {_cell(_code(d.uri))} | {d.format} | {digest} | {rows} |")
    lines += ["", *_evaluation(gate, report), "", "## Intended use", ""]
    lines.append(
        f"For {INTENDED_USE.get(str(config.method), 'the task of its training data')}. It was evaluated "
        "offline on the suites above only; check it on your own traffic before relying on it elsewhere."
    )
    limitations = _limitations(gate, report, gate_spec, approval)
    lines += ["", "## Limitations", "", *[f"- {item}" for item in limitations]]
    return "\n".join(lines) + "\n"


def _evaluation(gate: GateResult, report: EvalReport | None) -> list[str]:
    lines = [
        "## Evaluation",
        "",
        "| Suite | Metric | Value | Threshold | Baseline | Passed | Message |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in gate.metrics:
        lines.append(
            f"| {_cell(_md(m.suite))} | {_cell(_md(m.metric))} | {_num(m.value)} | {_cell(_threshold(m))} | "
            f"{_num(m.baseline)} | {'yes' if m.passed else '**no**'} | {_cell(_md(m.message or ''))} |"
        )
    if not gate.metrics:
        lines.append("| — | — | — | — | — | **no** | the gate checked nothing |")
    outcomes = report.suites if report else []
    if outcomes:
        lines += ["", "Per suite: " + "; ".join(f"{_md(o.suite)} {o.rows} rows" for o in outcomes) + "."]
        scorers = [f"{_md(o.suite)}: {_md(o.scorer)}" for o in outcomes if o.scorer]
        if scorers:  # the detectors and classifiers, with their versions
            lines += ["", "Scored by: " + "; ".join(scorers) + "."]
    if report is None:
        lines += ["", "No evaluation report was available."]
    elif report.error:
        lines += ["", f"The evaluation failed: {_md(report.error)}"]
    return lines


def _limitations(
    gate: GateResult, report: EvalReport | None, spec: EvalGateSpec | None, approval: Approval | None
) -> list[str]:
    items = []
    measured = {m.metric for m in gate.metrics if m.value is not None}
    missing = [f"{metric} ({meaning})" for metric, meaning in MEASURES.items() if metric not in measured]
    if missing:
        items.append("The gate did not test: " + "; ".join(missing) + ".")
    failed = [m for m in gate.metrics if not m.passed]
    if failed:
        checks = "; ".join(_md(f"{m.suite}: {m.message or m.metric}") for m in failed)
        items.append(f"Failed checks: {checks}.")
    if not any(m.comparator == "no_regression" for m in gate.metrics):
        items.append("No suite was tested for regression against the baseline model.")
    outcomes = report.suites if report else []
    seeded = spec.seeds if spec is not None else [v for o in outcomes for v in o.seed_values]
    if not seeded:
        items.append("Run-to-run variance was not tested: each suite was evaluated under one seed.")
    rule_based = sorted({o.suite for o in outcomes if o.scorer and _rule_based(o.scorer)})
    if rule_based:
        items.append(
            "Scored by a word list (phrase rules or a lexicon), not a trained classifier or judge: "
            + ", ".join(_md(s) for s in rule_based)
            + "."
        )
    small = [f"{_md(o.suite)} ({o.rows} rows)" for o in outcomes if 0 < o.rows < SMALL_SUITE]
    if small:
        items.append(
            f"Evaluated on fewer than {SMALL_SUITE} rows, so their values are uncertain by several points: "
            + ", ".join(small)
            + "."
        )
    if approval is None or approval.decision != "Approved":
        items.append("No person reviewed or approved this model before it was published.")
    items.append(
        "Only the listed evaluation datasets were used: behaviour on other domains, languages, long "
        "contexts, multi-turn conversations, tool use, and live traffic is untested, as are latency, "
        "memory use and factual accuracy beyond the suites."
    )
    return items


def _rule_based(scorer: str) -> bool:
    """A word list's name (`classifiers.wordlists`), or an older report's "lexicon fallback"/"rule-based"."""
    return any(word in scorer.lower() for word in ("word list", "lexicon fallback", "rule-based", "regex"))


def _approval(approval: Approval | None, spec: EvalGateSpec | None) -> str:
    if approval is not None:
        comment = f': "{_md(approval.comment)}"' if approval.comment else ""
        verdict = f" (verdict {_code(approval.verdict_id)})" if approval.verdict_id else ""
        return f"{approval.decision} by {_md(approval.by)} at {approval.at.isoformat()}{verdict}{comment}"
    if spec is not None and not spec.require_approval:
        return "not required by the gate"
    return "none recorded"


def _base(config: TrainContract) -> str:
    base = config.base_model
    digest = f"digest {_code(_sha256(base.digest))}" if base.digest else "digest not recorded"
    revision = f"revision {_md(base.revision)}, " if base.revision else ""
    return f"{_code(base.uri)} ({revision}{digest})"


def _adapter(config: TrainContract) -> str:
    adapter = config.adapter
    kind = str(adapter.type)
    if kind == "full":
        return "full (all weights trained)"
    rank = adapter.rank or 16
    alpha = adapter.alpha if adapter.alpha is not None else 2 * rank
    dropout = adapter.dropout if adapter.dropout is not None else 0.05
    modules = ", ".join(adapter.target_modules or ["all-linear"])
    return f"{kind}: rank {rank}, alpha {alpha:g}, dropout {dropout:g}, target modules {modules}"


def _threshold(m: MetricResult) -> str:
    if m.threshold is None:
        return "—"
    return {"min": f">= {m.threshold:.4g}", "max": f"<= {m.threshold:.4g}"}.get(
        m.comparator or "", f"no regression beyond {m.threshold:.4g}"
    )


def _sha256(digest: str | None) -> str | None:
    return None if digest is None else "sha256:" + digest.removeprefix("sha256:")


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _code(text: str | None) -> str:
    """Inline code, unless the text itself holds a backtick (then escaped plain text)."""
    if text is None:
        return ""
    return f"`{text}`" if "`" not in text and "\n" not in text else _md(text)


def _md(text: str) -> str:
    """Text from a spec, a model or a person, made inert in Markdown yet readable as plain text: no raw
    HTML (only a `<` that could open a tag is escaped, so "0.2 < min 0.3" stays as it is), no links or
    images, no code spans, no line breaks."""
    text = _TAG_OPEN.sub("&lt;", _ENTITY.sub("&amp;", text))
    return " ".join(_LINKISH.sub(r"\\\g<0>", text).split())


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
