"""EvalGates on vision jobs, through the real `evaluate` command: a tiny ViT trained (LoRA, at another image
size) to tell red squares from blue ones passes classification accuracy and fails a suite whose labels it
gets wrong; its base model's ImageNet-style head cannot be compared with, so no-regression fails closed
saying what to change, while a baseline classifier of the same classes is compared; a tiny Llava trained
to give a fixed reply passes exact match on replies generated from the images, and the untrained model
fails it."""

from __future__ import annotations

import json
import random
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from finetune_api.gate import EvalReport
from finetune_api.hyperparameters import Resolved
from finetune_api.plan import RunPlan
from finetune_api.run_layout import COMPLETE_MARKER
from finetune_api.trainer_config import TrainContract
from finetune_api.v1alpha1 import EvalGate, FineTuneJob
from finetune_api.v1alpha1.conditions import Verdict
from finetune_api.v1alpha1.finetunejob import GateResult
from finetune_trainer import train
from finetune_trainer.__main__ import main as trainer_main
from finetune_trainer.checkpoints import latest_complete
from finetune_trainer.storage import Store
from helpers.datagen import jsonl, sentence
from helpers.tinymodels import image_classifier, vision_language_model
from helpers.visiondata import chat_rows, label_rows

ANSWER = "It is red."


def plan_of(model: Path, data: Path, vision: dict[str, Any], *, adapter: str) -> RunPlan:
    job = FineTuneJob.model_validate(
        {
            "metadata": {"name": "vision-gate", "namespace": "test", "uid": str(uuid.uuid4())},
            "spec": {
                "method": "vision",
                "baseModel": {"uri": str(model)},
                "datasets": {"training": {"uri": str(data / "train.jsonl")}},
                "adapter": {"type": adapter},
                "vision": vision,
                "checkpointing": {"saveSteps": 1000},
                "storage": {"bucket": "unused"},
            },
        }
    )
    return RunPlan.of(job, staging_root=str(data / "staging"), run="v-1")


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunPlan, TrainContract]:
    """A LoRA run of the tiny ViT at imageSize 48 on 64 coloured squares; its staging holds the checkpoint."""
    tmp = tmp_path_factory.mktemp("vit-run")
    model = image_classifier(tmp / "model")
    (tmp / "train.jsonl").write_bytes(jsonl(label_rows(64, seed=4)))
    plan = plan_of(model, tmp, {"task": "image_classification", "imageSize": 48}, adapter="lora")
    config = plan.train_contract(Resolved(epochs=3, batch_size=8, learning_rate=5e-3))
    assert train.main(config, tmp / "work") == 0
    return plan, config


def asked_rows(count: int, seed: int) -> list[dict[str, Any]]:
    """Chat rows about a coloured square, each asking its own question (so that the data gates see distinct
    rows) and answered with ANSWER."""
    rng = random.Random(seed)
    rows = chat_rows(count, seed, answer=ANSWER)
    for row in rows:
        row["messages"][1]["content"][1]["text"] = sentence(rng, words=8)
    return rows


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunPlan, TrainContract]:
    """A full fine-tune of the tiny Llava to answer ANSWER about any image."""
    tmp = tmp_path_factory.mktemp("llava-run")
    rng = random.Random(0)
    corpus = ["You describe images.", ANSWER, *(sentence(rng) for _ in range(200))]
    model = vision_language_model(tmp / "model", corpus)
    (tmp / "train.jsonl").write_bytes(jsonl(asked_rows(16, seed=1)))
    plan = plan_of(model, tmp, {"task": "chat"}, adapter="full")
    config = plan.train_contract(Resolved(epochs=24, batch_size=8, learning_rate=1e-2))
    assert train.main(config, tmp / "work") == 0
    return plan, config


def evaluate(
    plan: RunPlan, config: TrainContract, gate: dict[str, Any], tmp: Path, *, step: int | None = None
) -> tuple[EvalReport, GateResult]:
    """`python -m finetune_trainer evaluate` on the run's candidate (or checkpoint `step`); the report it
    writes and the gate's verdict on it."""
    store = Store()
    evalgate = EvalGate.model_validate({"metadata": {"name": "vision"}, "spec": gate})
    step = step if step is not None else latest_complete(store, config.layout)
    assert step is not None
    contract = plan.evaluate_contract(config, evalgate, step)
    path = tmp / f"evaluate-{uuid.uuid4().hex[:6]}.json"
    path.write_text(contract.model_dump_json(by_alias=True))
    assert trainer_main(["evaluate", "--config", str(path), "--workdir", str(tmp / "scratch")]) == 0
    report = EvalReport.model_validate_json(store.read_bytes(config.layout.eval_report))
    return report, plan.verdict(evalgate.spec, report, runner="evaluate")


def suite(name: str, uri: Path, *, minimum: float = 0.9, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "dataset": {"uri": str(uri)},
        "metric": "exact_match",
        "threshold": {"min": minimum},
        "generation": {"maxNewTokens": 16, "batchSize": 8},
    } | extra


def messages(result: GateResult) -> dict[tuple[str, str], tuple[bool, str]]:
    """(suite, "threshold" or "no_regression") -> (passed, message)."""
    checks = {}
    for m in result.metrics:
        regression = m.comparator == "no_regression" or m.message.startswith("no regression")
        checks[(m.suite, "no_regression" if regression else "threshold")] = (m.passed, m.message)
    return checks


def test_a_trained_classifier_passes_on_accuracy_and_fails_on_labels_it_gets_wrong(
    classifier_run: tuple[RunPlan, TrainContract], tmp_path: Path
) -> None:
    plan, config = classifier_run
    holdout = label_rows(24, seed=5)
    (tmp_path / "colors.jsonl").write_bytes(jsonl(holdout))
    swapped = [row | {"label": {"red": "blue", "blue": "red"}[row["label"]]} for row in holdout]
    (tmp_path / "swapped.jsonl").write_bytes(jsonl(swapped))
    gate = {
        "suites": [suite("colors", tmp_path / "colors.jsonl"), suite("swapped", tmp_path / "swapped.jsonl")],
        "noRegression": {"enabled": False},
    }
    report, result = evaluate(plan, config, gate, tmp_path)
    colors, wrong = report.suites
    assert colors.value is not None
    assert colors.value >= 0.9
    assert colors.scores
    assert set(colors.scores) <= {0.0, 1.0}
    assert len(colors.scores) == 24
    assert wrong.value is not None
    assert wrong.value <= 0.1
    assert result.verdict == Verdict.FAILED
    checks = messages(result)
    assert checks[("colors", "threshold")][0]
    assert not checks[("swapped", "threshold")][0]
    examples = Store().read_bytes(config.layout.eval_examples).decode().splitlines()
    first = json.loads(examples[0])
    assert first["prompt"].startswith("data:image/png;base64,...")
    assert first["candidate"] == first["reference"] == holdout[0]["label"]


def test_a_classifier_is_compared_only_with_a_baseline_of_its_classes(
    classifier_run: tuple[RunPlan, TrainContract], tmp_path: Path
) -> None:
    """The base ViT's head has ten other classes: no-regression fails closed and says what to change,
    while the threshold check still passes. A baseline classifier of red and blue (untrained) is compared,
    and the trained candidate is shown no worse."""
    plan, config = classifier_run
    (tmp_path / "colors.jsonl").write_bytes(jsonl(label_rows(40, seed=6)))
    gate = {"suites": [suite("colors", tmp_path / "colors.jsonl")], "noRegression": {"tolerance": 0.05}}
    report, result = evaluate(plan, config, gate, tmp_path)
    (colors,) = report.suites
    assert colors.error is None
    assert colors.baseline is None
    assert colors.baseline_error
    assert "baseline.source: Model" in colors.baseline_error
    checks = messages(result)
    assert checks[("colors", "threshold")][0]
    passed, message = checks[("colors", "no_regression")]
    assert not passed
    assert "predicts the classes ['LABEL_0', 'LABEL_1'" in message
    assert "leave suite colors out of noRegression.suites" in message

    other = image_classifier(tmp_path / "red-blue", head_labels=2)
    settings = json.loads((other / "config.json").read_text())
    settings |= {"id2label": {"0": "red", "1": "blue"}, "label2id": {"red": 0, "blue": 1}}
    (other / "config.json").write_text(json.dumps(settings))
    gate |= {"baseline": {"source": "Model", "model": {"uri": str(other)}}}
    report, result = evaluate(plan, config, gate, tmp_path)
    (colors,) = report.suites
    assert colors.baseline is not None
    assert len(colors.baseline_scores) == 40
    assert result.verdict == Verdict.PASSED, result.metrics


def test_a_vlm_trained_on_a_reply_passes_exact_match_and_the_untrained_one_fails(
    chat_run: tuple[RunPlan, TrainContract], tmp_path: Path
) -> None:
    plan, config = chat_run
    (tmp_path / "asked.jsonl").write_bytes(jsonl(asked_rows(12, seed=7)))
    gate = {"suites": [suite("asked", tmp_path / "asked.jsonl")], "noRegression": {"tolerance": 0.5}}
    report, result = evaluate(plan, config, gate, tmp_path)
    (asked,) = report.suites
    assert (asked.value, asked.baseline) == (1.0, 0.0), report
    assert result.verdict == Verdict.PASSED, result.metrics
    first = json.loads(Store().read_bytes(config.layout.eval_examples).decode().splitlines()[0])
    assert first["prompt"].startswith("system: You describe images.\nuser: <image>")
    assert first["candidate"] == ANSWER != first["baseline"]

    # the untrained model as a checkpoint of the run: what it says about the images is not the answer
    untrained = Path(config.layout.checkpoint(999))
    shutil.copytree(Path(plan.job.spec.base_model.uri), untrained)
    (untrained / COMPLETE_MARKER).write_text(json.dumps({"step": 999, "createdAt": "2025-01-01T00:00:00Z"}))
    gate["noRegression"] = {"enabled": False}
    report, result = evaluate(plan, config, gate, tmp_path, step=999)
    assert report.suites[0].value == 0.0
    assert result.verdict == Verdict.FAILED
