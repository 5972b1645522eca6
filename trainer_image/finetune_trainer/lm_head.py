"""The LM head scores labelled positions only, on every device.

TRL's fused LM head (SFT, DPO and GRPO ask for it with `fused_lm_head=True`) projects the final hidden
states through the vocabulary in tiles and returns per-token log-probabilities. On CUDA and XPU with
Triton it projects only the positions whose next-token label is not -100; everywhere else it projects
every position and zeroes the unlabelled ones afterwards, so that tile shapes stay fixed for compilers that
recompile per shape (Neuron, through XLA). Eager CPU, and GPUs without Triton, have no such compiler, and
in completion-only training most positions are context: on the bundled order-json chats about a third of
the tokens are assistant text. For a small model the head is a large share of the work (SmolLM2-135M:
28M of its 135M weights, multiplied at every position, forward and backward), so projecting every
position there costs about a quarter of each step for nothing.

`score_labelled_only()` makes TRL take its compact path on every device whose type is not XLA. The
arithmetic is TRL's own in both paths (the same tiled log-softmax, then a scatter back to the batch's
shape), so losses, gradients and logged metrics are unchanged.
"""

from __future__ import annotations

import torch

COMPILED_DEVICE_TYPES = frozenset({"xla"})


def _compact(device: torch.device) -> bool:
    return device.type not in COMPILED_DEVICE_TYPES


def score_labelled_only() -> None:
    """Idempotent. TRL decides compact-or-not with `trl.trainer.utils._use_triton(device)` and nothing
    else in that module calls it; the kernel choice (Triton or torch tiles) is made in
    `trl.kernels.chunked_logprob` by its own copy, which stays as it is."""
    from trl.trainer import utils  # noqa: PLC0415

    utils._use_triton = _compact
