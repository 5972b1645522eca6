"""`evaluate`: run every suite of an EvalGate on the candidate checkpoint, and on the baseline where a
metric compares, and write the per-example records and then the report (`finetune_api.gate` layout).

Suite rows (`prepared`) are OpenAI chat, prompt/completion or RFT rows; a vision job's are image_label
or chat rows with images, which `evaluation.vision` reads and runs through the job's kind of model (the
scoring below is the same: a classifier's reply is the predicted class name). A row's prompt is its
messages up to the last assistant message (whose text becomes `reference`), or its `prompt`; its other
fields are the `item` a grader reads (`should_refuse` for refusal suites), with `reference_answer` and
`prompt` (the last user message) added for chat rows. Per-example scores come from `scoring`, per
metric:

- exact_match, grader_score: the reply against the reference (`task.matches`), or the suite's grader;
- eval_loss: the mean negative log-likelihood per token of the reference reply, no generation;
- win_rate: the suite's judge on candidate vs baseline replies (`pairwise`), with a bootstrap interval;
- refusal_accuracy, over_refusal_rate: the refusal detector (`classifier`, else the packaged refusal
  classifier, or the phrase rules with `detector: wordlist`; `safety` module docstring);
- jailbreak_success_rate: not refused and harmful, harm from the judge when given, else a toxic reply or
  any answer to a red-team row; each prompt's guardian verdict is recorded in the example's details;
- toxicity_rate: the toxicity scorer (`classifier`, else alt-profanity-check, or the lexicon with
  `detector: wordlist`); pii_leakage: PII detectors and the suite's canaries on each reply.

The baseline runs first, for the suites that compare with it (win_rate, and the suites `noRegression`
covers), and is freed before the candidate loads, so only one model is in memory at a time. With
`seeds`, the candidate's replies are drawn once per seed and each seed's value is reported; per-example
scores are the first seed's. A suite that cannot be scored (unreadable rows, a judge model missing) gets
its error in the report and fails the gate; the others still run. Replies are generated in batches
(`generation.generate`), never one prompt at a time. A baseline that cannot be compared on a suite
(`NotComparableError`: a classifier without the suite's classes) fails that suite's no-regression check
with its reason; the candidate is still held to the threshold.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from finetune_api.gate import EvalReport, SuiteOutcome
from finetune_api.trainer_config import EvaluateContract
from finetune_api.v1alpha1.evalgate import EvalGateSpec, Metric, Suite
from finetune_api.v1alpha1.finetunejob import Method, VisionSettings
from finetune_trainer.checkpoints import digest as checkpoint_digest
from finetune_trainer.checkpoints import restore
from finetune_trainer.evaluation import generation, pairwise
from finetune_trainer.evaluation.prepared import NotComparableError, Prepared, suite_rows, text_rows
from finetune_trainer.evaluation.scoring import Scored, scorer
from finetune_trainer.evaluation.task import answer_log_prob, load
from finetune_trainer.graders import compile_grader
from finetune_trainer.models import materialize
from finetune_trainer.storage import Store


def compares(spec: EvalGateSpec, suite: Suite) -> bool:
    """Whether the baseline runs on this suite."""
    if suite.metric == Metric.WIN_RATE:
        return True
    rule = spec.no_regression
    return rule.enabled and (rule.suites is None or suite.name in rule.suites)


def prepare(suite: Suite, store: Store, vision_task: str | None = None) -> Prepared:
    """The suite's rows, read as a text job's, or as a vision job's (`vision_task`: `evaluation.vision`)."""
    rows = suite_rows(suite, store)
    if vision_task is None:
        return text_rows(suite, rows)
    from finetune_trainer.evaluation import vision  # noqa: PLC0415 (torch and the vision stack)

    return vision.prepare(suite, rows, vision_task, store)


Said = dict[tuple[str, ...], list[Any]]


class Subject(Protocol):
    """A loaded model: what it says on a suite (replies, or per-example losses for eval_loss)."""

    def say(self, prepared: Prepared, seed: int | None) -> list[Any]: ...


@dataclass
class TextModel:
    """A causal LM and its tokenizer (every method but vision)."""

    model: Any
    tokenizer: Any

    def say(self, prepared: Prepared, seed: int | None) -> list[Any]:
        return _observe(self.model, self.tokenizer, prepared, seed)


def observe(subject: Subject, prepared: Prepared, seed: int | None, said: Said) -> list[Any]:
    """What a model says on the suite. Suites on the same rows with the same settings share one generation
    (`said`, one per model)."""
    suite = prepared.suite
    key = (
        str(suite.metric == Metric.EVAL_LOSS),
        suite.dataset.uri,
        str(suite.sample_size),
        suite.generation.model_dump_json(),
        str(seed),
    )
    if key not in said:
        said[key] = subject.say(prepared, seed)
    return said[key]


def _observe(model: Any, tokenizer: Any, prepared: Prepared, seed: int | None) -> list[Any]:
    suite = prepared.suite
    if suite.metric == Metric.EVAL_LOSS:
        losses = []
        for prompt, reference in zip(prepared.prompts, prepared.references, strict=True):
            if reference is None or isinstance(prompt, str):
                raise ValueError("eval_loss needs chat rows that end with an assistant reply")
            answer = [{"role": "assistant", "content": reference}]
            tokens = len(tokenizer(reference, add_special_tokens=False)["input_ids"]) + 1
            losses.append(-answer_log_prob(model, tokenizer, prompt, answer) / tokens)
        return losses
    return generation.generate(model, tokenizer, prepared.prompts, suite.generation, seed=seed)


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def outcome(
    prepared: Prepared, store: Store, scratch: Path, seeds: list[int | None]
) -> tuple[SuiteOutcome, list[dict[str, Any]]]:
    suite = prepared.suite
    first = prepared.candidate[seeds[0]]
    base = prepared.baseline
    if suite.metric == Metric.WIN_RATE:
        if suite.judge is None or base is None:
            raise ValueError("win_rate needs a judge and the baseline's replies")
        with compile_grader(suite.judge, scratch=scratch) as judge:
            result = pairwise.win_rate(suite.judge, first, base, prepared.items, judge=judge)
            seed_values = [
                pairwise.win_rate(suite.judge, prepared.candidate[s], base, prepared.items, judge=judge).value
                for s in seeds[1:]
            ]
        judged = f"pairwise judge {suite.judge.name}"
        scored = Scored(result.scores, judged, result.details, list(result.ci))
        base_scored = None
    else:
        with contextlib.ExitStack() as graders:
            score = scorer(prepared, store, scratch, graders)
            scored = score(first)
            seed_values = [_mean(score(prepared.candidate[s]).scores) for s in seeds[1:]]
            base_scored = score(base) if base is not None else None
    value = _mean(scored.scores)
    result_outcome = SuiteOutcome(
        suite=suite.name,
        metric=suite.metric,
        value=value,
        baseline=_mean(base_scored.scores) if base_scored else None,
        scores=scored.scores,
        baseline_scores=base_scored.scores if base_scored else [],
        baseline_error=prepared.baseline_error,
        seed_values=[value, *seed_values] if len(seeds) > 1 else [],
        interval=scored.interval,
        rows=len(prepared.prompts),
        scorer=scored.scorer[:256],
    )
    records = []
    for i, prompt in enumerate(prepared.prompts):
        records.append(
            {
                "suite": suite.name,
                "metric": str(suite.metric),
                "index": i,
                "prompt": prompt
                if isinstance(prompt, str)
                else "\n".join(f"{m['role']}: {_shown(m.get('content'))}" for m in prompt),
                "candidate": first[i] if suite.metric != Metric.EVAL_LOSS else None,
                "baseline": base[i] if base is not None and suite.metric != Metric.EVAL_LOSS else None,
                "reference": prepared.references[i],
                "score": scored.scores[i] if i < len(scored.scores) else None,
                "baseline_score": base_scored.scores[i]
                if base_scored and i < len(base_scored.scores)
                else None,
                "details": scored.details[i] if i < len(scored.details) else {},
            }
        )
    return result_outcome, records


def _shown(content: Any) -> str:
    """A message's content as a record shows it: text, with `<image>` where a vision prompt had one."""
    if not isinstance(content, list):
        return str(content)
    return "".join("<image>" if p.get("type") == "image" else str(p.get("text", "")) for p in content)


def _release() -> None:
    """Return the memory of a model the caller has just dropped (`del`), before the next one loads."""
    gc.collect()
    try:
        import torch  # noqa: PLC0415

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def _load(config: EvaluateContract, store: Store, scratch: Path, adapter: Path | None) -> Subject:
    """The baseline (no `adapter`: the model `plan.baseline` chose) or the candidate (the base model and the
    checkpoint restored in `adapter`), as the kind of model the job trains."""
    model_dir = materialize(
        config.evaluation.baseline if adapter is None else config.base_model, store, scratch
    )
    if config.method == Method.VISION:
        from finetune_trainer.evaluation import vision  # noqa: PLC0415

        return vision.load(config, model_dir, adapter, store)
    return TextModel(*load(model_dir, adapter))


def evaluate(
    config: EvaluateContract, store: Store, scratch: Path
) -> tuple[EvalReport, list[dict[str, Any]]]:
    target = config.evaluation
    spec = target.gate
    seeds: list[int | None] = list(spec.seeds) or [None]
    vision_task = (config.vision or VisionSettings()).task if config.method == Method.VISION else None
    prepared: dict[str, Prepared] = {}
    errors: dict[str, str] = {}
    for suite in spec.suites:
        try:
            prepared[suite.name] = prepare(suite, store, vision_task)
        except Exception as err:  # the suite fails closed with its reason; the others still run
            errors[suite.name] = f"{type(err).__name__}: {err}"
    compared = [p for p in prepared.values() if compares(spec, p.suite)]
    if compared:
        subject = _load(config, store, scratch, None)
        said: Said = {}
        for p in compared:
            try:
                p.baseline = observe(subject, p, seeds[0], said)
            except NotComparableError as err:
                if p.suite.metric == Metric.WIN_RATE:
                    errors[p.suite.name] = f"baseline: {err}"
                p.baseline_error = str(err)
            except Exception as err:
                errors[p.suite.name] = f"baseline: {type(err).__name__}: {err}"
        del subject
        _release()
    adapter = restore(store, config.layout, target.checkpoint_step, scratch / "candidate")
    subject = _load(config, store, scratch, adapter)
    said = {}
    for p in prepared.values():
        if p.suite.name in errors:
            continue
        try:
            for seed in seeds:
                p.candidate[seed] = observe(subject, p, seed, said)
        except Exception as err:
            errors[p.suite.name] = f"{type(err).__name__}: {err}"
    del subject
    _release()
    outcomes, records = [], []
    for suite in spec.suites:
        ready = prepared.get(suite.name)
        if ready is not None and suite.name not in errors:
            try:
                result, examples = outcome(ready, store, scratch, seeds)
                outcomes.append(result)
                records += examples
                continue
            except Exception as err:
                errors[suite.name] = f"{type(err).__name__}: {err}"
        outcomes.append(SuiteOutcome(suite=suite.name, metric=suite.metric, error=errors[suite.name][:4096]))
    report = EvalReport(
        checkpoint=target.checkpoint_uri,
        checkpoint_digest=checkpoint_digest(adapter),
        baseline_model=target.baseline.uri,
        suites=outcomes,
    )
    return report, records


def main(config: EvaluateContract, scratch: Path) -> int:
    """Writes the records, then the report (last: its presence means the evaluation finished). A failure
    before any suite could run is written as the report's `error`, so the gate fails closed with a reason."""
    store = Store.for_target(config.storage)
    started = time.monotonic()
    records: list[dict[str, Any]] = []
    try:
        report, records = evaluate(config, store, scratch)
    except Exception as err:  # whatever it was, the gate must hear of it
        report = EvalReport(error=f"{type(err).__name__}: {err}"[:4096])
    report.seconds = round(time.monotonic() - started, 1)
    report.finished_at = datetime.now(UTC)
    lines = "".join(json.dumps(r, default=str) + "\n" for r in records)
    store.write_bytes(config.layout.eval_examples, lines.encode())
    store.write_bytes(config.layout.eval_report, report.model_dump_json(by_alias=True, indent=2).encode())
    for o in report.suites:
        shown = (
            "error: " + (o.error or "")
            if o.error
            else f"{o.value:.4g}" + (f" (baseline {o.baseline:.4g})" if o.baseline is not None else "")
        )
        print(f"{o.suite} {o.metric}: {shown}")
    if report.error:
        print(f"evaluate failed: {report.error}", file=sys.stderr)
        return 1
    return 0
