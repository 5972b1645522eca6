"""The trainer's dense logic: which tokens SFT learns, what the image ships, and what it refuses."""

from __future__ import annotations

import pytest

from datagen import chat_rows
from finetune_api.v1alpha1.finetunejob import Adapter, AdapterType
from finetune_trainer import builtin
from finetune_trainer.builtin import order_json
from finetune_trainer.methods.sft import encode
from finetune_trainer.models import ModelError, load_kwargs
from tinymodels import tokenizer


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
        assert (order_json.FOLDER / name).read_text() == text, (
            f"regenerate with python -m {order_json.__name__}"
        )


def test_unknown_builtins_are_named_with_what_exists() -> None:
    with pytest.raises(builtin.BuiltinError, match="smollm2-135m-instruct"):
        builtin.resolve("builtin://models/gpt-9")
    with pytest.raises(builtin.BuiltinError, match=r"order-json/training\.jsonl"):
        builtin.resolve("builtin://datasets/../../secrets.jsonl")
