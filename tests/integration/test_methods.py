"""DPO and RFT through `python -m finetune_trainer train` on a tiny model: each trains, checkpoints, and
moves the model the way its method promises (DPO widens the preference margin, RFT raises the reward)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from datagen import chat_rows, preference_rows
from tinymodels import causal_lm
from trainrun import contract, run_to_end


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = [m["content"] for row in chat_rows(300) for m in row["messages"]]
    return causal_lm(tmp_path_factory.mktemp("tiny") / "model", corpus)


def final_checkpoint(staging: Path) -> Path:
    markers = sorted(staging.glob("checkpoints/*/COMPLETE"))
    assert markers, "no complete checkpoint"
    return markers[-1].parent


def log_prob(model: Any, tok: Any, prompt: list[dict[str, str]], answer: list[dict[str, str]]) -> float:
    """Sum of the answer's token log-probabilities after the prompt, under the model's chat template."""
    context = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(prompt + answer, tokenize=False)
    ids = tok(full, add_special_tokens=False, return_tensors="pt").input_ids
    start = len(tok(context, add_special_tokens=False).input_ids)
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].log_softmax(-1)
    targets = ids[0, 1:]
    return float(logits[torch.arange(start - 1, len(targets)), targets[start - 1 :]].sum())


def margin(model: Any, tok: Any, rows: list[dict[str, Any]]) -> float:
    """Mean log-probability of the preferred answer minus the non-preferred one."""
    gaps = [
        log_prob(model, tok, r["input"]["messages"], r["preferred_output"])
        - log_prob(model, tok, r["input"]["messages"], r["non_preferred_output"])
        for r in rows
    ]
    return sum(gaps) / len(gaps)


@pytest.mark.integration
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


@pytest.mark.integration
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
