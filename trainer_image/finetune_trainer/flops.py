"""Model FLOPs utilisation (MFU): the FLOPs the model's arithmetic needs per second of training, as a share
of what the accelerators could do at their dense bf16/fp16 tensor-core peak.

    flops per token = 2·N            forward through every weight
                    + 2·N            backward: gradients of the activations, frozen weights included
                    + 2·N_trainable  backward: gradients of the weights that train
                    + 12·L·d·T       attention scores and their use, forward and backward
    MFU = flops per token * tokens per second (all ranks) / (peak FLOP/s per device * devices)

N counts the parameters (embeddings included, as nanoGPT and torchtitan do), L the layers, d the hidden
size, T the sequence length (`maxSeqLength`: packed rows fill it; shorter rows make this an upper bound).
For full fine-tuning this is PaLM's 6·N + 12·L·H·Q·T (Chowdhery et al. 2022, appendix B); with LoRA the
frozen base needs no weight gradients, so it counts 4·N, not 6·N: the figure is the model's useful work,
never recomputation (activation checkpointing is not counted either).

The peak comes from the device name (below), or from `FINETUNE_PEAK_FLOPS` (FLOP/s of one device) for an
accelerator not listed. MFU is absent on CPU, in fp32 training, and on an unknown accelerator: a number
computed against a guessed peak would mislead.

Expected time (`expected_time`, printed and written to progress.json before the first step): the run's
tokens x the FLOPs per token above, at a documented sustained rate per device, not a measurement of this
run (the progress ETA switches to the measured rate once steps are done):

    GPU  its peak x `GPU_EXPECTED_MFU` (0.25; QLoRA 0.2) x devices. bench/README measured, on one H200,
         212-309 TFLOP/s (0.21-0.31 of the peak) for bf16 LoRA of 1.1B-7.2B models at 8 x 1,024 and
         4 x 1,024 tokens, and QLoRA at 0.79x of that.
    CPU  `CPU_FLOPS_PER_THREAD` (40 GFLOP/s, float32) x torch's threads: SmolLM2-135M LoRA SFT, 8 rows of
         about 92 tokens a step, trained 69 tokens per CPU-second on this project's 2-core machine
         (bench/sft_throughput.py, unpacked). A machine shared with other work gives fewer CPU-seconds
         per second than it has cores, and takes longer.

DPO adds its reference pass, one forward over every pair before the first step: `forward_per_token` on one
epoch's tokens (measured on the DPO quickstart: 47 s modelled, 43 + 4 s for the training and eval pairs).
RFT's time is mostly generation, which this does not model: its estimate is a lower bound.
"""

from __future__ import annotations

import os
from typing import Any

PEAK_FLOPS_ENV = "FINETUNE_PEAK_FLOPS"
GPU_EXPECTED_MFU = 0.25
QLORA_EXPECTED_MFU = 0.2
CPU_FLOPS_PER_THREAD = 40e9

# Dense (not sparse) bf16/fp16 tensor-core peaks from the vendors' data sheets, FLOP/s, most specific first.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM and NVL
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("V100", 125e12),  # fp16 only
    ("T4", 65e12),  # fp16 only
)


def peak_flops(device_name: str, env: dict[str, str] | None = None) -> float | None:
    """One device's dense bf16/fp16 peak, FLOP/s, or None when unknown."""
    env = dict(os.environ if env is None else env)
    if env.get(PEAK_FLOPS_ENV):
        return float(env[PEAK_FLOPS_ENV])
    for marker, flops in PEAK_BF16_FLOPS:
        if marker in device_name:
            return flops
    return None


def _layers_and_hidden(config: Any) -> tuple[int, int]:
    """Layers and hidden size of a transformers config (of its language model for vision-language ones)."""
    text = getattr(config, "text_config", None) or config
    return int(getattr(text, "num_hidden_layers", 0) or 0), int(getattr(text, "hidden_size", 0) or 0)


def flops_per_token(config: Any, total: int, trainable: int, seq_len: int) -> float:
    """The model FLOPs of training on one token (the formula above); `config` is a transformers config."""
    layers, hidden = _layers_and_hidden(config)
    return 4.0 * total + 2.0 * trainable + 12.0 * layers * hidden * seq_len


def forward_per_token(config: Any, total: int, seq_len: int) -> float:
    """The FLOPs of a forward pass alone on one token (no gradients): 2·N + 4·L·d·T, a third of full
    training's. DPO's reference scores every pair once with it."""
    layers, hidden = _layers_and_hidden(config)
    return 2.0 * total + 4.0 * layers * hidden * seq_len


def parameter_counts(model: Any) -> tuple[int, int]:
    """(all parameters, trainable parameters) of a torch module."""
    total = trainable = 0
    for parameter in model.parameters():
        count = parameter.numel()
        total += count
        if parameter.requires_grad:
            trainable += count
    return total, trainable


def mfu(per_token: float, tokens_per_second: float, peak: float, devices: int) -> float:
    return per_token * tokens_per_second / (peak * max(1, devices))


def expected_time(
    tokens: int, per_token: float, *, gpu_name: str | None, devices: int, threads: int, qlora: bool
) -> tuple[float, str] | None:
    """(seconds, how: the rate assumed) for training on `tokens` tokens at `per_token` FLOPs each, on
    `devices` GPUs named `gpu_name`, or on a CPU with `threads` threads when `gpu_name` is None. None for a
    GPU whose peak is unknown (set FINETUNE_PEAK_FLOPS)."""
    if gpu_name is None:
        rate = CPU_FLOPS_PER_THREAD * max(1, threads)
        how = f"{max(1, threads)} CPU threads x {CPU_FLOPS_PER_THREAD / 1e9:g} GFLOP/s"
    else:
        peak = peak_flops(gpu_name)
        if peak is None:
            return None
        mfu_ = QLORA_EXPECTED_MFU if qlora else GPU_EXPECTED_MFU
        rate = peak * mfu_ * max(1, devices)
        how = f"{max(1, devices)} x {gpu_name} at {mfu_:.0%} of its {peak / 1e12:g} TFLOP/s peak"
    return tokens * per_token / rate, how
