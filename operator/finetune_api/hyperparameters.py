"""The documented rule that turns `"auto"` hyperparameters into numbers, from the training set size.

Pure and deterministic; the operator applies it after data validation (when the row count is known) and
`finetune run` applies the same function locally. The resolved values are recorded in the trainer
contract and in every checkpoint, so a run can always say what it trained with.

Rule (modelled on OpenAI's fine-tuning defaults):
- epochs: 3, raised so that at least 100 examples are seen (at most 25 epochs) and lowered so that at
  most 25,000 are (at least 1 epoch).
- batch size: about 0.2% of the rows, rounded down to a power of two, between 1 and 256 (DPO and RFT cap
  at 64: each row is two or `generationsPerPrompt` sequences).
- learning rate: a base per method and adapter (full 2e-5, LoRA/QLoRA 2e-4; DPO full 5e-7, DPO LoRA 5e-6;
  RFT full 1e-6, RFT LoRA 1e-5), times `learningRateMultiplier` when that is set ("auto" = 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from finetune_api.v1alpha1.finetunejob import AdapterType, Hyperparameters, Method

MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
DEFAULT_EPOCHS = 3
MAX_AUTO_EPOCHS = 25

BASE_LEARNING_RATE: dict[tuple[Method, bool], float] = {
    # (method, full fine-tuning?) -> learning rate
    (Method.SFT, True): 2e-5,
    (Method.SFT, False): 2e-4,
    (Method.VISION, True): 2e-5,
    (Method.VISION, False): 2e-4,
    (Method.DPO, True): 5e-7,
    (Method.DPO, False): 5e-6,
    (Method.RFT, True): 1e-6,
    (Method.RFT, False): 1e-5,
}


@dataclass(frozen=True)
class Resolved:
    epochs: int
    batch_size: int
    learning_rate: float


def auto_epochs(rows: int) -> int:
    if rows * DEFAULT_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_AUTO_EPOCHS, math.ceil(MIN_TARGET_EXAMPLES / rows))
    if rows * DEFAULT_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(1, MAX_TARGET_EXAMPLES // rows)
    return DEFAULT_EPOCHS


def auto_batch_size(rows: int, method: Method) -> int:
    cap = 64 if method in (Method.DPO, Method.RFT) else 256
    target = max(1, int(rows * 0.002))
    power: int = 2 ** int(math.log2(target))
    return min(cap, power)


def resolve(hp: Hyperparameters, *, rows: int, method: Method, adapter: AdapterType) -> Resolved:
    """Concrete epochs, batch size and learning rate for `rows` training rows."""
    if rows < 1:
        raise ValueError("cannot resolve hyperparameters for an empty training set")
    epochs = auto_epochs(rows) if hp.epochs == "auto" else hp.epochs
    batch_size = auto_batch_size(rows, method) if hp.batch_size == "auto" else hp.batch_size
    if hp.learning_rate != "auto":
        learning_rate = float(hp.learning_rate)
    else:
        base = BASE_LEARNING_RATE[(Method(method), AdapterType(adapter) == AdapterType.FULL)]
        multiplier = hp.learning_rate_multiplier
        learning_rate = base * (1.0 if multiplier == "auto" else float(multiplier))
    return Resolved(epochs=int(epochs), batch_size=int(batch_size), learning_rate=learning_rate)
