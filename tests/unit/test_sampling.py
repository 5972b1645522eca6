"""RFT sampling (`finetune_trainer.sampling`, through `methods.rft`): the completions are those `generate`
gives each prompt, they end at the end-of-sequence token or the first stop string, and the model being
trained comes out of sampling as it went in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from finetune_api.trainer_config import TrainContract
from finetune_api.v1alpha1.finetunejob import Adapter
from finetune_trainer.data.rows import read_jsonl
from finetune_trainer.methods import Run, rft
from finetune_trainer.models import peft_config
from finetune_trainer.sampling import sample, sampling_weights
from helpers.datagen import chat_rows, jsonl
from helpers.tinymodels import causal_lm
from helpers.trainrun import contract


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = [m["content"] for row in chat_rows(100) for m in row["messages"]]
    return causal_lm(tmp_path_factory.mktemp("tiny") / "model", corpus)


def prompts(tok: Any, count: int, copies: int) -> list[list[int]]:
    """`count` chat prompts of different lengths, each `copies` times in a row (as GRPO batches them)."""
    rendered = [
        tok.apply_chat_template(
            [row["messages"][1]], add_generation_prompt=True, tokenize=True, return_dict=True
        )
        for row in chat_rows(count, seed=3)
    ]
    return [list(r["input_ids"])[: 12 + 5 * i] for i, r in enumerate(rendered) for _ in range(copies)]


def generated(model: Any, rows: list[list[int]], config: Any, pad: int) -> list[list[int]]:
    """Plain `generate` over the left-padded rows: each row's new tokens, up to its first end-of-sequence."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    eos = config.eos_token_id
    return [
        row[: next((k + 1 for k, t in enumerate(row) if t in eos), len(row))]
        for row in out[:, width:].tolist()
    ]


def greedy(eos: list[int], pad: int, tokens: int = 12) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=tokens, do_sample=False, eos_token_id=eos, pad_token_id=pad)


def test_completions_are_what_generate_gives_each_prompt(tiny: Path) -> None:
    """Each distinct prompt is run once and rows leave the batch as they end (chunks of 3 tokens here), yet
    every completion is token for token what one `generate` over the repeated prompts gives."""
    model, tok = AutoModelForCausalLM.from_pretrained(tiny).eval(), AutoTokenizer.from_pretrained(tiny)
    rows = prompts(tok, 3, copies=2)
    # an end-of-sequence id the model does produce, so that rows end at different lengths
    first = generated(model, rows, greedy([tok.eos_token_id], tok.pad_token_id), tok.pad_token_id)
    eos = [tok.eos_token_id, first[0][4]]
    config = greedy(eos, tok.pad_token_id)

    expected = generated(model, rows, config, tok.pad_token_id)
    with torch.no_grad():
        ours = sample(model, rows, config, eos=eos, pad=tok.pad_token_id, chunk=3)

    assert ours == expected
    assert len({len(c) for c in ours}) > 1  # some rows ended before others
    assert all(c[-1] in eos or len(c) == 12 for c in ours)


def test_completions_end_at_the_first_stop_string(tiny: Path, tmp_path: Path) -> None:
    """`rft.stopStrings` through `rft.build`: a completion (as the grader reads it) ends with the token
    that completes a stop string, and goes no further; one without a stop string runs to its end token or
    to maxCompletionTokens."""
    grader = {"type": "python", "name": "any", "source": "def grade(sample, item):\n    return 0.0\n"}
    spec = {
        "rft": {"grader": grader, "maxCompletionTokens": 16, "generationsPerPrompt": 4, "stopStrings": ["a"]}
    }
    path = contract(tmp_path, tiny, f"{tmp_path}/s/", method="rft", fmt="rft", spec=spec)
    config = TrainContract.model_validate_json(path.read_text())
    rows = [{"messages": [r["messages"][1]]} for r in chat_rows(8, seed=4)]
    data = read_jsonl("train.jsonl", jsonl(rows))
    trainer = rft.build(Run(config, tiny, tmp_path / "out", train_rows=data.rows, eval_rows=[], gpu=False))
    tok = trainer.processing_class

    torch.manual_seed(0)
    batch = [row["prompt"] for row in rft.dataset(data.rows) for _ in range(4)]
    _, completion_ids, _, completions, *_ = trainer._generate(batch)

    stopped = 0
    for ids, completion in zip(completion_ids, completions, strict=True):
        text = completion[0]["content"]
        if "a" in text:  # the last token completed it; the text before that token has none
            assert "a" not in tok.decode(ids[:-1], skip_special_tokens=True), text
            stopped += len(ids) < 16
        else:
            assert ids[-1] == tok.eos_token_id or len(ids) == 16, text
    assert stopped >= len(batch) // 2  # the stop string is common in this vocabulary


def test_sampling_leaves_the_adapter_and_the_base_as_they_were(tiny: Path) -> None:
    """While sampling, the LoRA is merged into the float32 base and dropout is off: the completions are the
    ones the unmerged model gives, and afterwards the model is in train mode with the same weights."""
    tok = AutoTokenizer.from_pretrained(tiny)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny),
        peft_config(Adapter.model_validate({"type": "lora", "rank": 4})),
    )
    torch.manual_seed(0)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # a trained adapter: lora_B starts at zero, which would merge nothing
            parameter.data.normal_(std=0.5)
    model.train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    rows = prompts(tok, 2, copies=2)
    config = greedy([tok.eos_token_id], tok.pad_token_id)

    model.eval()
    expected = generated(model, rows, config, tok.pad_token_id)  # the adapter as separate matrices
    model.train()
    with torch.no_grad(), sampling_weights(model):
        assert not model.training
        assert all(getattr(m, "merged", True) for m in model.modules() if hasattr(m, "lora_A"))
        ours = sample(model, rows, config, eos=[tok.eos_token_id], pad=tok.pad_token_id)

    assert ours == expected
    assert model.training
    assert not any(getattr(m, "merged", False) for m in model.modules())
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            assert torch.equal(parameter, before[name]), name
        else:
            torch.testing.assert_close(parameter, before[name], rtol=0, atol=1e-6, msg=name)
