"""The trainer's dense logic: which tokens SFT learns, what the image ships, and what it refuses."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
from trl.trainer import utils
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from finetune_api.trainer_config import TrainContract
from finetune_api.v1alpha1.common import DatasetFormat, ModelSource
from finetune_api.v1alpha1.finetunejob import Adapter, AdapterType
from finetune_trainer import attention, builtin, lm_head
from finetune_trainer.builtin import order_json
from finetune_trainer.data.rows import Row, read_jsonl
from finetune_trainer.evaluation.task import evaluate
from finetune_trainer.methods import Run, dpo
from finetune_trainer.methods.sft import encode
from finetune_trainer.models import ModelError, load_kwargs, materialize
from finetune_trainer.storage import Store
from helpers.datagen import chat_rows, jsonl, preference_rows
from helpers.tinymodels import causal_lm, llama_config, tokenizer
from helpers.trainrun import contract


@pytest.fixture(scope="module")
def tok():  # type: ignore[no-untyped-def]
    return tokenizer([m["content"] for row in chat_rows(100) for m in row["messages"]])


def learned(tok, encoded) -> str:  # type: ignore[no-untyped-def]
    ids = [t for t, m in zip(encoded["input_ids"], encoded["assistant_masks"], strict=True) if m]
    return str(tok.decode(ids))


def test_only_weighted_assistant_turns_are_learned(tok) -> None:  # type: ignore[no-untyped-def]
    row = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "an old answer", "weight": 0},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": "the answer"},
        ]
    }
    assert learned(tok, encode(tok, row, 512)) == "the answer<|im_end|>\n"
    del row["messages"][2]["weight"]  # OpenAI's default: every assistant turn is learned
    assert learned(tok, encode(tok, row, 512)) == "an old answer<|im_end|>\nthe answer<|im_end|>\n"


def test_prompt_completion_learns_the_completion_and_its_end(tok) -> None:  # type: ignore[no-untyped-def]
    encoded = encode(tok, {"prompt": "Q: two plus two?\nA:", "completion": " four"}, 512)
    assert learned(tok, encoded) == " four<|im_end|>"
    assert len(encode(tok, {"prompt": "word " * 100, "completion": "x"}, 16)["input_ids"]) == 16


def test_qlora_on_cpu_is_refused_with_what_to_do() -> None:
    with pytest.raises(ModelError, match=r"qlora needs a GPU.*use lora on CPU"):
        load_kwargs(Adapter(type=AdapterType.QLORA), gpu=False)


def test_builtin_datasets_are_what_the_generator_writes() -> None:
    for name, text in order_json.render().items():
        assert (order_json.DATASETS / name).read_text() == text, (
            f"regenerate with python -m {order_json.__name__}"
        )


def test_unknown_builtins_are_named_with_what_exists() -> None:
    with pytest.raises(builtin.BuiltinError, match="smollm2-135m-instruct"):
        builtin.resolve("builtin://models/gpt-9")
    with pytest.raises(builtin.BuiltinError, match=r"order-json/training\.jsonl"):
        builtin.resolve("builtin://datasets/../../secrets.jsonl")


def holdout(rows: list[dict[str, Any]]) -> list[Row]:
    return read_jsonl("holdout.jsonl", jsonl(rows)).rows


def test_holdout_metric_follows_the_method(tmp_path: Path) -> None:
    corpus = [m["content"] for row in chat_rows(100) for m in row["messages"]]
    model_dir = causal_lm(tmp_path / "model", corpus)
    model, tok = (
        AutoModelForCausalLM.from_pretrained(model_dir).eval(),
        AutoTokenizer.from_pretrained(model_dir),
    )

    dpo = TrainContract.model_validate_json(
        contract(tmp_path, model_dir, f"{tmp_path}/s/", method="dpo", fmt="preference").read_text()
    )
    pairs = preference_rows(6)
    swapped = [
        r | {"preferred_output": r["non_preferred_output"], "non_preferred_output": r["preferred_output"]}
        for r in pairs
    ]
    straight = evaluate(model, tok, holdout(pairs), DatasetFormat.PREFERENCE, dpo)
    reverse = evaluate(model, tok, holdout(swapped), DatasetFormat.PREFERENCE, dpo)
    assert straight["metric"] == "preference_accuracy"
    assert straight["score"] + reverse["score"] == pytest.approx(1.0)  # each pair is decided one way

    prompts = [{"messages": [r["messages"][1]], "never": "no reply says this"} for r in chat_rows(3)]
    for operation, expected in (("ne", 1.0), ("eq", 0.0)):
        grader = {"type": "string_check", "name": "g", "input": "{{sample.output_text}}"}
        grader |= {"reference": "{{item.never}}", "operation": operation}
        spec = {"rft": {"grader": grader, "maxCompletionTokens": 4}}
        rft = TrainContract.model_validate_json(
            contract(tmp_path, model_dir, f"{tmp_path}/s/", method="rft", fmt="rft", spec=spec).read_text()
        )
        result = evaluate(model, tok, holdout(prompts), DatasetFormat.RFT, rft)
        assert (result["metric"], result["score"], result["rows"]) == ("reward", expected, 3)


def test_packed_rows_train_exactly_as_if_each_were_alone(tok, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Padding-free SFT attends within each packed row (`varlen_sdpa`) and projects only the learned
    positions through the LM head: the loss and every gradient equal those of the rows run one by one, and
    the head sees no position without a label."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(tok))
    encoded = [encode(tok, row, 512) for row in chat_rows(3)]
    examples = [
        {"input_ids": e["input_ids"], "labels": [t if m else -100 for t, m in zip(*e.values(), strict=True)]}
        for e in encoded
    ]

    total, separately = 0, []
    for example in examples:
        ids, labels = torch.tensor([example["input_ids"]]), torch.tensor(example["labels"][1:])
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1]
        separately.append(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
        total += int((labels != -100).sum())
    expected = torch.stack(separately).sum() / total
    expected.backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    scored: list[int] = []
    kernel = utils._ChunkedLogProbFunction

    class Spy:
        @staticmethod
        def apply(hidden, *args):  # type: ignore[no-untyped-def]
            scored.append(hidden.shape[0])
            return kernel.apply(hidden, *args)

    monkeypatch.setattr(utils, "_ChunkedLogProbFunction", Spy)
    monkeypatch.setattr(utils, "_use_triton", utils._use_triton)  # put back after the test
    lm_head.score_labelled_only()
    utils.add_fused_lm_head(model)
    model.config._attn_implementation = attention.register()
    batch = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)(examples)
    assert batch["input_ids"].shape[0] == 1  # one row holding the three
    packed = model(**batch, use_cache=False, fused_lm_head=True).loss
    packed.backward()

    assert scored == [total]
    assert packed.item() == pytest.approx(expected.item(), rel=1e-5)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_models_from_different_uris_are_downloaded_to_different_folders(tmp_path: Path) -> None:
    """evaluate materializes a `baseline.model` and the job's base model in one scratch folder: the second
    must not be served the first one's files."""

    class Bucket(Store):
        def download_prefix(self, prefix: str, local: Path) -> None:
            local.mkdir(parents=True)
            (local / "config.json").write_text(json.dumps({"from": prefix}))

    store = Bucket()
    base = materialize(ModelSource(uri="s3://models/base/"), store, tmp_path)
    baseline = materialize(ModelSource(uri="s3://models/production/"), store, tmp_path)
    assert json.loads((base / "config.json").read_text()) == {"from": "s3://models/base/"}
    assert json.loads((baseline / "config.json").read_text()) == {"from": "s3://models/production/"}


def perturbed_copy(model_dir: Path, directory: Path) -> Path:
    """The model with noise on every weight, and its tokenizer: a reference that is not the base."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(directory)
    return directory


def dpo_trained(run: Run, monkeypatch: pytest.MonkeyPatch, *, per_step: bool) -> tuple[Any, list[int]]:
    """The DPO trainer of `run`, trained; and the positions its LM head scored in each call while it was
    built (the reference pass) and then while it trained. `per_step` is TRL without
    `precompute_ref_log_probs`: the reference runs again in every step."""
    calls: list[int] = []
    kernel = utils._ChunkedLogProbFunction

    class Spy:
        @staticmethod
        def apply(hidden, *args):  # type: ignore[no-untyped-def]
            calls.append(hidden.shape[0])
            return kernel.apply(hidden, *args)

    with monkeypatch.context() as patch:
        patch.setattr(utils, "_ChunkedLogProbFunction", Spy)
        patch.setattr(utils, "_use_triton", utils._use_triton)  # put back after the test
        if per_step:
            config = dpo.DPOConfig
            patch.setattr(dpo, "DPOConfig", lambda **kw: config(**kw | {"precompute_ref_log_probs": False}))
        torch.manual_seed(0)  # TRL makes the LoRA before the Trainer seeds
        trainer = dpo.build(run)
        built = len(calls)
        trainer.train()
    return trainer, [calls[:built], calls[built:]]  # type: ignore[list-item]


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_dpo_scores_the_reference_once_and_trains_as_with_a_reference_every_step(
    adapter: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reference's log-probabilities of every training and validation pair are computed once, when
    the trainer is built, through the LM head that projects only the response positions; training then
    runs the policy alone, and its losses, rewards and evaluation are those of a reference run at every
    step. LoRA: the base with the adapter disabled; full: a given reference model, not the base."""
    corpus = [m["content"] for row in chat_rows(100) for m in row["messages"]]
    model_dir = causal_lm(tmp_path / "model", corpus)
    spec: dict[str, Any] = {"dpo": {"beta": 0.1}}
    if adapter == "full":
        spec["dpo"]["referenceModel"] = {"uri": str(perturbed_copy(model_dir, tmp_path / "reference"))}
    config = TrainContract.model_validate_json(
        contract(
            tmp_path,
            model_dir,
            f"{tmp_path}/s/",
            method="dpo",
            fmt="preference",
            adapter=adapter,
            save_steps=3,
            learning_rate=1e-3,
            spec=spec,
        ).read_text()
    )
    run = Run(
        config,
        model_dir,
        tmp_path / "out",
        holdout(preference_rows(12, seed=3)),
        holdout(preference_rows(4, seed=4)),
        gpu=False,
    )
    ours, (built, training) = dpo_trained(run, monkeypatch, per_step=False)
    plain, (plain_built, plain_training) = dpo_trained(run, monkeypatch, per_step=True)

    pairs = [*ours.train_dataset, *ours.eval_dataset]
    assert sum(built) == sum(len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in pairs)
    assert plain_built == []
    assert len(training) * 2 == len(plain_training)  # per step: the policy, then the reference
    assert ours.state.global_step == plain.state.global_step == 6  # 12 pairs / 4 x 2 epochs
    logged = ("loss", "rewards/margins", "logps/rejected", "eval_loss", "eval_rewards/accuracies")
    history, plain_history = ours.state.log_history, plain.state.log_history
    assert len(history) == len(plain_history)
    for entry, expected in zip(history, plain_history, strict=True):
        for key in set(logged) & set(expected):
            assert entry[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), (entry["step"], key)
    if adapter == "full":  # the given reference is not the base: the first step is not log(2)
        assert history[0]["loss"] != pytest.approx(math.log(2), abs=1e-3), history[0]
