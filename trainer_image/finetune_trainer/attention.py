"""Padding-free attention without a varlen kernel: one causal SDPA call per packed sequence.

A padding-free batch is one row holding several sequences end to end, with `cu_seq_lens_q` marking where
each starts (TRL's collator sends it). FlashAttention's varlen kernel attends within each sequence; on
CPU (or any device without it) transformers' SDPA path instead builds a block-diagonal mask over the whole
row and attends across all of it, so a batch of 8 sequences of 200 tokens costs a 1,600 x 1,600 attention
per head and layer, 8 times the work of the sequences alone, and the masked kernel is slower per element
than the causal one. `varlen_sdpa` slices the row at the boundaries and runs the causal kernel on each
slice, the same arithmetic as FlashAttention's varlen path. Anything that is not a packed row (a padded
batch, generation with a cache) goes to the stock SDPA function unchanged.
"""

from __future__ import annotations

import importlib.util
import itertools
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

NAME = "varlen_sdpa"


def varlen_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query/key/value are (batch, heads, tokens, head_dim); returns (batch, tokens, heads, head_dim)."""
    bounds: torch.Tensor | None = kwargs.get("cu_seq_lens_q")
    if bounds is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        # not a packed row (a padded batch), or decoding against a cache
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    edges = bounds.tolist()
    pieces = [
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            dropout_p=dropout,
            scale=scaling,
            is_causal=True,
        )
        for start, end in itertools.pairwise(edges)
        if end > start
    ]
    return torch.cat(pieces, dim=2).transpose(1, 2).contiguous(), None


def register() -> str:
    """Makes `attn_implementation=NAME` loadable (idempotent); returns NAME."""
    AttentionInterface.register(NAME, varlen_sdpa)
    if NAME not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def padding_free(*, gpu: bool) -> str:
    """The attention for padding-free batches: FlashAttention 2 on a GPU that has it, else `varlen_sdpa`."""
    if gpu and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return register()
