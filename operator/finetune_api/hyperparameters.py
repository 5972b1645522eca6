"""The documented rule that turns `"auto"` hyperparameters into numbers, from the training set and the device.

Pure and deterministic: every input is explicit. The operator applies it after data validation with the
device its training pods request (`Device.of_resources`), `finetune run` with the machine it runs on; both
through `RunPlan.resolve`. The resolved values are recorded in the trainer contract and in every
checkpoint, so a run can always say what it trained with. An explicit value is never changed.

Inputs: the validated training rows, their estimated lengths (`TokenLengths`: UTF-8 bytes / 3, rounded
up, as the data gates measure them; without them every row counts as `maxSeqLength` tokens), the method,
adapter, `maxSeqLength`, `packing` and RFT settings, and the `Device` (`finetune_api.device`).

A *sequence* is what the trainer batches: a row, or with `packing` a window of `maxSeqLength` tokens
(rows x mean tokens / `maxSeqLength` of them). Its tokens, for memory, are the longest row's (rows pad to
the longest in their batch), capped at `maxSeqLength`; DPO counts them twice (chosen and rejected, each
with the prompt), RFT `generationsPerPrompt` x (prompt + `maxCompletionTokens`), vision always
`maxSeqLength` (image tokens are not measured).

Rule:
- epochs (OpenAI's): 3, raised so that at least 100 examples are seen (at most 25 epochs) and lowered so
  that at most 25,000 are (at least 1 epoch). Examples seen = epochs x rows; the device never changes it.
- micro-batch (sequences per device per forward pass): the device's token budget / the sequence's tokens,
  rounded down to a power of two, at least 1. A GPU's budget is 64 tokens per GiB of its memory with
  LoRA/QLoRA (80 GiB: 5,120 tokens) and 32 per GiB for full fine-tuning (optimizer states take the rest):
  sized from bench/README (7.2B LoRA at 4 x 1,024 tokens peaks at 50.2 GiB without activation
  checkpointing), so models up to about 8B fit; a bigger model needs explicit values. A CPU's budget is
  1,024 tokens (8 rows of 100 tokens: 1.35x the tokens per CPU-second of single rows, at 4 GB RSS for 135M).
- batch size (sequences per optimizer step, across devices and accumulation): the larger of OpenAI's
  (0.2% of the sequences, rounded down to a power of two) and one full micro-batch on every device; then
  at most 256 (64 for DPO and RFT: each row is several sequences) and at most what leaves 100 optimizer
  steps (examples seen / 100, rounded down to a power of two), at least one sequence per device.
- gradient accumulation: batch size / (micro-batch x devices), so that no device holds more than its
  micro-batch. With an explicit batch size, the fewest steps that keep each device within its
  micro-batch; an explicit `gradientAccumulationSteps` is kept (the micro-batch shrinks to fit it).
- learning rate: a base per method and adapter (full 2e-5, LoRA/QLoRA 2e-4; DPO full 5e-7, DPO LoRA 5e-6;
  RFT full 1e-6, RFT LoRA 1e-5) for a batch of 8, scaled by the square root of batch size / 8 (the square
  root rule for Adam, Malladi et al. 2022) and held within 0.5x-2x of the base (batches 2 to 32 scale;
  OpenAI's default multiplier, too, spans 4x over its batch sizes), times `learningRateMultiplier` when
  set. The batch is the one resolved, explicit or not; an explicit `learningRate` is used as it is.

Examples (rows of about 100 tokens, SFT LoRA): 300 rows on a CPU -> 3 epochs, batch 8 (micro-batch 8),
114 optimizer steps, learning rate 2e-4 (the rule before: batch 1, 900 steps); 20,000 rows on one 80 GiB
GPU -> 1 epoch, batch 32 (micro-batch 32), 625 steps, 4e-4; the same rows of 2,000 tokens -> micro-batch 2,
16 accumulation steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from finetune_api.base import TokenLengths
from finetune_api.device import Device
from finetune_api.v1alpha1.finetunejob import AdapterType, Hyperparameters, Method, RftSettings

MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
DEFAULT_EPOCHS = 3
MAX_AUTO_EPOCHS = 25
BATCH_SHARE = 0.002  # OpenAI's batch: 0.2% of the training set
MAX_BATCH = 256
MAX_BATCH_MULTI_SEQUENCE = 64  # DPO and RFT
MIN_STEPS = 100
GPU_TOKENS_PER_GIB = 64  # LoRA/QLoRA; full fine-tuning gets half
CPU_MICRO_BATCH_TOKENS = 1_024
BYTES_PER_TOKEN = 3  # measured 3.0 on the bundled order-json rows with SmolLM2's tokenizer and chat template
REFERENCE_BATCH = 8
LR_SCALE_BOUNDS = (0.5, 2.0)

BASE_LEARNING_RATE: dict[tuple[Method, bool], float] = {
    # (method, full fine-tuning?) -> learning rate at a batch of REFERENCE_BATCH
    (Method.SFT, True): 2e-5,
    (Method.SFT, False): 2e-4,
    (Method.VISION, True): 2e-5,
    (Method.VISION, False): 2e-4,
    (Method.DPO, True): 5e-7,
    (Method.DPO, False): 5e-6,
    (Method.RFT, True): 1e-6,
    (Method.RFT, False): 1e-5,
}


def estimate_tokens(text: str) -> int:
    """A row's tokens, estimated without its tokenizer: UTF-8 bytes / 3, rounded up. English prose runs
    nearer 4 bytes a token, so this errs long (the safe side for memory)."""
    return -(-len(text.encode("utf-8")) // BYTES_PER_TOKEN)


def token_lengths(texts: Iterable[str]) -> TokenLengths | None:
    """The mean and the longest of the rows' estimated tokens; None without rows."""
    counts = [estimate_tokens(t) for t in texts]
    if not counts:
        return None
    return TokenLengths(mean=-(-sum(counts) // len(counts)), max=max(counts))


@dataclass(frozen=True)
class Workload:
    """What the trainer batches in one epoch: `sequences` of `tokens` each on average (what time counts)
    and at most `longest` (what memory counts)."""

    sequences: int
    tokens: int
    longest: int


def workload(
    rows: int,
    lengths: TokenLengths | None,
    *,
    method: Method,
    max_seq_length: int,
    packing: bool,
    rft: RftSettings | None = None,
) -> Workload:
    """Sequences per epoch and their tokens (see the module docstring)."""
    mean = min(max_seq_length, lengths.mean) if lengths else max_seq_length
    longest = min(max_seq_length, lengths.max) if lengths else max_seq_length
    method = Method(method)
    if method == Method.VISION:
        return Workload(rows, max_seq_length, max_seq_length)
    if method == Method.DPO:
        return Workload(rows, 2 * mean, 2 * longest)
    if method == Method.RFT:
        settings = rft
        generations = settings.generations_per_prompt if settings else 8
        completion = settings.max_completion_tokens if settings else 512
        return Workload(rows, generations * (mean + completion), generations * (longest + completion))
    if packing:
        windows = max(1, math.ceil(rows * mean / max_seq_length))
        return Workload(windows, max(1, rows * mean // windows), max_seq_length)
    return Workload(rows, mean, longest)


@dataclass(frozen=True)
class Resolved:
    epochs: int
    batch_size: int
    learning_rate: float
    gradient_accumulation_steps: int = 1
    steps: int | None = None  # expected optimizer steps (the trainer's count, from the estimated sequences)
    tokens: int | None = None  # expected tokens trained on, all epochs (an estimate)
    micro_batch: int | None = None  # sequences per device per forward pass
    device: Device | None = None

    def summary(self) -> str:
        """One line for people: the schedule and what it runs on."""
        line = f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}, batch size {self.batch_size}"
        if self.micro_batch is not None and self.device is not None:
            line += (
                f" ({self.micro_batch} per device x {self.gradient_accumulation_steps} accumulation x "
                f"{self.device})"
            )
        line += f", learning rate {self.learning_rate:g}"
        if self.steps is not None:
            line += f"; {self.steps} optimizer steps"
        if self.tokens is not None:
            line += f", about {self.tokens:,} tokens"
        return line


def auto_epochs(rows: int) -> int:
    if rows * DEFAULT_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_AUTO_EPOCHS, math.ceil(MIN_TARGET_EXAMPLES / rows))
    if rows * DEFAULT_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(1, MAX_TARGET_EXAMPLES // rows)
    return DEFAULT_EPOCHS


def _power_of_two(n: float) -> int:
    """The largest power of two <= n, at least 1."""
    return 1 if n < 2 else 2 ** int(math.log2(n))


def micro_batch(device: Device, adapter: AdapterType, tokens: int) -> int:
    """Sequences of `tokens` one device holds in a forward pass (see the module docstring)."""
    if device.kind == "cpu":
        budget = float(CPU_MICRO_BATCH_TOKENS)
    else:
        per_gib = GPU_TOKENS_PER_GIB // (2 if AdapterType(adapter) == AdapterType.FULL else 1)
        budget = per_gib * device.memory_gib
    return _power_of_two(budget / max(1, tokens))


def learning_rate(hp: Hyperparameters, method: Method, adapter: AdapterType, batch_size: int) -> float:
    if hp.learning_rate != "auto":
        return float(hp.learning_rate)
    base = BASE_LEARNING_RATE[(Method(method), AdapterType(adapter) == AdapterType.FULL)]
    lo, hi = LR_SCALE_BOUNDS
    scale = min(hi, max(lo, math.sqrt(batch_size / REFERENCE_BATCH)))
    multiplier = hp.learning_rate_multiplier
    return base * scale * (1.0 if multiplier == "auto" else float(multiplier))


def resolve(
    hp: Hyperparameters,
    *,
    rows: int,
    method: Method,
    adapter: AdapterType,
    device: Device,
    lengths: TokenLengths | None = None,
    rft: RftSettings | None = None,
) -> Resolved:
    """Concrete epochs, batch size, accumulation and learning rate for `rows` training rows of `lengths`
    on `device`, with the optimizer steps and tokens they mean (the rule: the module docstring)."""
    if rows < 1:
        raise ValueError("cannot resolve hyperparameters for an empty training set")
    epochs = auto_epochs(rows) if hp.epochs == "auto" else int(hp.epochs)
    work = workload(
        rows, lengths, method=method, max_seq_length=hp.max_seq_length, packing=hp.packing, rft=rft
    )
    micro = micro_batch(device, adapter, work.longest)
    devices = device.count
    explicit_accumulation = hp.gradient_accumulation_steps != "auto"
    if hp.batch_size == "auto":
        cap = MAX_BATCH_MULTI_SEQUENCE if Method(method) in (Method.DPO, Method.RFT) else MAX_BATCH
        openai = _power_of_two(work.sequences * BATCH_SHARE)
        steps_cap = _power_of_two(work.sequences * epochs / MIN_STEPS)
        target = min(max(openai, micro * devices), cap, steps_cap)
        accumulation = int(hp.gradient_accumulation_steps) if explicit_accumulation else 1
        per_device = max(1, min(micro, target // (devices * accumulation)))
        if not explicit_accumulation:
            accumulation = max(1, target // (per_device * devices))
        batch_size = per_device * devices * accumulation
    else:
        batch_size = int(hp.batch_size)
        if explicit_accumulation:
            accumulation = int(hp.gradient_accumulation_steps)
        else:
            accumulation = max(1, math.ceil(batch_size / (devices * micro)))
    per_device = max(1, math.ceil(batch_size / (devices * accumulation)))  # as the trainer splits it
    per_step = per_device * devices * accumulation
    return Resolved(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate(hp, method, adapter, batch_size),
        gradient_accumulation_steps=accumulation,
        steps=epochs * math.ceil(work.sequences / per_step),
        tokens=epochs * work.sequences * work.tokens,
        micro_batch=per_device,
        device=device,
    )
