"""Tiny chat models with a known behaviour, published as promoted versions, for the rollout tests.

`answering_model` trains a tiny Llama (the tests' usual one, or a wider and deeper one that is genuinely
slower) until it answers every question with one fixed sentence: a model line whose stable version says
"yes" and whose candidate says "no" gives a judge something real to prefer. `publish` puts a model folder
through the trainer's own promotion (`finetune_trainer.promotion.publish`: objects verified, manifest
written last), so the model server loads it exactly as it would load a version a FineTuneJob promoted.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from finetune_trainer.promotion import Promotion, publish
from finetune_trainer.storage import Store
from helpers.tinymodels import llama_config, tokenizer

QUESTIONS = [
    "is the sky blue today",
    "should I water the plants",
    "can you help me with this",
    "is it going to rain",
    "do you like music",
    "will the train be late",
    "is this the right way",
    "can I park here",
]


def _question(rng: random.Random) -> str:
    return f"{rng.choice(QUESTIONS)} {rng.randint(0, 99)}?"


def answering_model(
    directory: Path,
    answer: str,
    *,
    hidden_size: int = 32,
    layers: int = 2,
    steps: int = 80,
    seed: int = 0,
) -> Path:
    """A tiny Llama trained (full fine-tuning, CPU, a few seconds) to reply `answer` to any question,
    saved with its tokenizer. Larger `hidden_size`/`layers` make a model that is slower to serve."""
    rng = random.Random(seed)
    corpus = [*QUESTIONS, answer, "yes", "no", "0123456789?"]
    tok = tokenizer(corpus)
    torch.manual_seed(seed)
    size = {"hidden_size": hidden_size, "intermediate_size": 2 * hidden_size, "num_hidden_layers": layers}
    model = LlamaForCausalLM(llama_config(tok, **size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        texts = [
            tok.apply_chat_template(
                [{"role": "user", "content": _question(rng)}, {"role": "assistant", "content": answer}],
                tokenize=False,
            )
            for _ in range(8)
        ]
        batch = tok(texts, return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def publish_version(model_dir: Path, destination: str, version: str, store: Store) -> Promotion:
    """`model_dir` published as `<destination>/<version>/` with its manifest; returns uri and digest."""
    return publish(
        store,
        source=str(model_dir),
        destination=destination,
        documents={},
        version=version,
        metadata={"purpose": "rollout test"},
    )
