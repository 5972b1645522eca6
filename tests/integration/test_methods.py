"""DPO and RFT through `python -m finetune_trainer train` on a tiny model: each trains, checkpoints, and
moves the model the way its method promises (DPO widens the preference margin, RFT raises the reward)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune_trainer.evaluation.task import answer_log_prob
from helpers.datagen import chat_rows, preference_rows
from helpers.trainrun import contract, run_to_end


def final_checkpoint(staging: Path) -> Path:
    markers = sorted(staging.glob("checkpoints/*/COMPLETE"))
    assert markers, "no complete checkpoint"
    return markers[-1].parent


def margin(model: Any, tok: Any, rows: list[dict[str, Any]]) -> float:
    """Mean log-probability of the preferred answer minus the non-preferred one."""
    gaps = [
        answer_log_prob(model, tok, r["input"]["messages"], r["preferred_output"])
        - answer_log_prob(model, tok, r["input"]["messages"], r["non_preferred_output"])
        for r in rows
    ]
    return sum(gaps) / len(gaps)


def test_dpo_with_lora_prefers_the_preferred_answers(tiny: Path, tmp_path: Path) -> None:
    rows = preference_rows(24, seed=3)
    staging = tmp_path / "staging"
    config = contract(
        tmp_path,
        tiny,
        f"{staging}/",
        method="dpo",
        fmt="preference",
        train_rows=rows,
        val_rows=preference_rows(6, seed=4),
        epochs=4,
        save_steps=6,
        spec={"dpo": {"beta": 0.1, "lossType": "sigmoid"}},
    )
    output = run_to_end(config, tmp_path / "work")
    assert "training complete at step 24" in output
    checkpoint = final_checkpoint(staging)
    metrics = json.loads((checkpoint / "finetune" / "metrics.json").read_text())
    assert "eval_loss" in metrics

    tok = AutoTokenizer.from_pretrained(tiny)
    base = AutoModelForCausalLM.from_pretrained(tiny).eval()
    before = margin(base, tok, rows)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny), checkpoint).eval()
    after = margin(tuned, tok, rows)
    assert after > before + 1.0, (before, after)


def test_dpo_full_fine_tuning_against_a_given_reference(tiny: Path, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    config = contract(
        tmp_path,
        tiny,
        f"{staging}/",
        method="dpo",
        fmt="preference",
        adapter="full",
        validation=False,
        train_rows=preference_rows(12, seed=5),
        epochs=1,
        learning_rate=1e-3,
        spec={"dpo": {"beta": 0.5, "lossType": "ipo", "referenceModel": {"uri": str(tiny)}}},
    )
    run_to_end(config, tmp_path / "work")
    base = load_file(tiny / "model.safetensors")
    trained = load_file(final_checkpoint(staging) / "model.safetensors")
    assert sum(not torch.equal(base[name], trained[name]) for name in base) > len(base) // 2


def test_dpo_resumed_from_a_checkpoint_ends_with_the_weights_of_an_unbroken_run(
    tiny: Path, tmp_path: Path
) -> None:
    """Full fine-tuning without a reference model: the reference is the base as loaded, scored once when
    the trainer is built. A run resumed from its step-4 checkpoint scores it from the base again, not from
    the restored weights, and ends where the run that never stopped ended."""
    staging = tmp_path / "staging"
    config = contract(
        tmp_path,
        tiny,
        f"{staging}/",
        method="dpo",
        fmt="preference",
        adapter="full",
        validation=False,
        train_rows=preference_rows(16, seed=5),
        epochs=2,
        save_steps=4,
        learning_rate=1e-3,
    )
    run_to_end(config, tmp_path / "work")
    last = staging / "checkpoints" / "step-000000008"
    unbroken = load_file(last / "model.safetensors")
    shutil.rmtree(last)  # as if the run had stopped after step 4

    output = run_to_end(config, tmp_path / "work2")
    assert "resuming from step 4" in output
    assert "training complete at step 8" in output
    resumed = load_file(last / "model.safetensors")
    base = load_file(tiny / "model.safetensors")
    for name, weights in unbroken.items():
        torch.testing.assert_close(resumed[name], weights, rtol=1e-4, atol=1e-6, msg=name)
    assert sum(not torch.equal(base[name], unbroken[name]) for name in base) > len(base) // 2


def rft_rows(count: int, seed: int) -> list[dict[str, Any]]:
    """Prompts with a reference field for the grader: the reply's budget in characters."""
    return [
        {"messages": [{"role": "user", "content": row["messages"][1]["content"]}], "budget": 40}
        for row in chat_rows(count, seed=seed)
    ]


# an efficiency reward that a tiny model learns in a few steps: shorter replies, within the row's budget
GRADER = {
    "type": "python",
    "name": "brevity",
    "source": "def grade(sample, item):\n"
    "    return max(0.0, 1 - len(sample['output_text']) / item['budget'])\n",
}


def rft_contract(tmp_path: Path, tiny: Path, staging: Path, *, epochs: int, **spec: Any) -> Path:
    # full fine-tuning: a LoRA on a model this small (hidden size 32) moves too little in a few GRPO steps
    return contract(
        tmp_path,
        tiny,
        f"{staging}/",
        method="rft",
        fmt="rft",
        train_rows=rft_rows(32, seed=6),
        val_rows=rft_rows(4, seed=7),
        epochs=epochs,
        batch_size=4,
        learning_rate=1e-2,
        adapter="full",
        save_steps=4,
        spec={"rft": {"grader": GRADER, "generationsPerPrompt": 4, "maxCompletionTokens": 8}} | spec,
    )


def test_rft_raises_the_grader_reward(tiny: Path, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    config = rft_contract(tmp_path, tiny, staging, epochs=6)
    output = run_to_end(config, tmp_path / "work", timeout=600)
    checkpoint = final_checkpoint(staging)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    rewards = [e["reward"] for e in state["log_history"] if "reward" in e]
    evals = [e["eval_reward"] for e in state["log_history"] if "eval_reward" in e]
    assert evals, output
    quarter = len(rewards) // 4
    first, last = rewards[:quarter], rewards[-quarter:]
    assert sum(last) / len(last) > sum(first) / len(first) + 0.1, rewards
    metrics = json.loads((checkpoint / "finetune" / "metrics.json").read_text())
    assert "eval_reward" in metrics


def test_rft_stops_early_when_the_grader_score_stops_improving(tiny: Path, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    # no reward can improve by more than 1.0: the second evaluation (step 8) is the end of patience
    stop = {"earlyStopping": {"metric": "grader_score", "patience": 1, "minDelta": 1.0}}
    config = rft_contract(tmp_path, tiny, staging, epochs=6, **stop)
    output = run_to_end(config, tmp_path / "work", timeout=600)
    assert "training complete at step 8" in output
    assert final_checkpoint(staging).name == "step-000000008"
