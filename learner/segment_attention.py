"""Group-aware attention for the packed layout: SDPA over the blocks the mask allows, not the whole row.

A packed row `[prompt_1, completion_11, ..., prompt_2, completion_21, ...]` under a (1, 1, L, L) mask
makes SDPA compute all L x L scores, most of them masked (other groups, sibling completions), and
the CPU kernel does not skip masked blocks. Here the row is cut into blocks of consecutive queries,
each attending to a few contiguous key spans, one SDPA call per block:
- a group's prompt against itself, causal (no mask tensor: the kernel's causal path);
- a chunk of consecutive completions of that group against `[its prompt, the chunk]`, with the
  block's own mask: the prompt fully, each completion itself causally. Chunks hold about as many
  completion tokens as the prompt has (at least `MIN_CHUNK_TOKENS`), so the sibling pairs computed
  and masked stay near the prompt's own share instead of growing with the group's size squared.
Blocks tile the row in order, so their outputs concatenated are the row's. Every query sees exactly
the keys the 4D mask lets it see, so the result equals masked SDPA up to summation order. Grouped
query attention runs in the kernel (`enable_gqa`), without copies of the key/value heads.

Registered in transformers' attention interface as `rl_segments`; the learner switches its `sdpa`
models to it (`learner.plan.choose_layout`). A forward call without `segments` (the padded layout)
runs plain `sdpa`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

SEGMENT_ATTENTION = "rl_segments"
MIN_CHUNK_TOKENS = 128  # completion tokens per chunk at least, so short prompts do not make many tiny calls


@dataclass(frozen=True)
class Block:
    """Queries [start, end) of the row attend to the keys of `key_spans` (contiguous, in row order)."""

    start: int
    end: int
    key_spans: tuple[tuple[int, int], ...]
    mask: Tensor | None  # (end - start, keys) bool, True = may attend; None: causal over one span of the same queries


@dataclass(frozen=True)
class Segments:
    blocks: tuple[Block, ...]

    def to(self, device: torch.device) -> Segments:
        return Segments(tuple(Block(b.start, b.end, b.key_spans, None if b.mask is None else b.mask.to(device))
                              for b in self.blocks))


def completion_chunks(lengths: list[int], prompt_len: int) -> list[list[int]]:
    """Consecutive completions (by index) in chunks of about max(prompt_len, MIN_CHUNK_TOKENS) tokens."""
    budget = max(prompt_len, MIN_CHUNK_TOKENS)
    chunks: list[list[int]] = []
    filled = 0  # tokens in the last chunk
    for i, n in enumerate(lengths):
        if chunks and filled + n <= budget:
            chunks[-1].append(i)
            filled += n
        else:
            chunks.append([i])
            filled = n
    return chunks


def chunk_mask(prompt_len: int, lengths: list[int]) -> Tensor:
    """(sum(lengths), prompt_len + sum(lengths)) bool: the prompt fully, each completion itself causally."""
    total = sum(lengths)
    owner = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))  # completion of each token
    own = (owner[:, None] == owner[None, :]) & torch.ones((total, total), dtype=torch.bool).tril()
    return torch.cat([torch.ones((total, prompt_len), dtype=torch.bool), own], dim=1)


def build_segments(groups: list[tuple[int, int, list[int]]], length: int) -> Segments:
    """`groups`: (start, prompt length, completion lengths) of each group, laid out [prompt, completions...] in order."""
    blocks: list[Block] = []
    for start, prompt_len, lengths in groups:
        prompt = (start, start + prompt_len)
        blocks.append(Block(start, start + prompt_len, (prompt,), None))
        first = start + prompt_len
        for chunk in completion_chunks(lengths, prompt_len):
            offset = first + sum(lengths[: chunk[0]])
            sizes = [lengths[i] for i in chunk]
            end = offset + sum(sizes)
            spans = ((start, end),) if offset == prompt[1] else (prompt, (offset, end))  # merged when adjacent
            blocks.append(Block(offset, end, spans, chunk_mask(prompt_len, sizes)))
    if [b.start for b in blocks] != [0, *[b.end for b in blocks[:-1]]] or blocks[-1].end != length:
        raise ValueError("build_segments: the groups must tile the row exactly once, in order")
    return Segments(tuple(blocks))


def _keys(states: Tensor, spans: tuple[tuple[int, int], ...]) -> Tensor:
    parts = [states[:, :, a:b] for a, b in spans]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


def segment_attention_forward(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                              dropout: float = 0.0, scaling: float | None = None, segments: Segments | None = None,
                              **kwargs) -> tuple[Tensor, None]:
    """transformers' attention-interface signature: query (1, H, L, D), key/value (1, Hkv, L, D) -> (1, L, H, D)."""
    if segments is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if query.shape[0] != 1:
        raise ValueError(f"segment attention takes one packed row, got a batch of {query.shape[0]}")
    gqa = query.shape[1] != key.shape[1]
    outputs = [
        F.scaled_dot_product_attention(
            query[:, :, b.start:b.end], _keys(key, b.key_spans), _keys(value, b.key_spans),
            attn_mask=b.mask, is_causal=b.mask is None, scale=scaling, enable_gqa=gqa,
        )
        for b in segments.blocks
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2), None


def register_segment_attention() -> None:
    """Make `rl_segments` a transformers attention implementation (its masks, for the padded layout, are sdpa's)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import (
        ALL_MASK_ATTENTION_FUNCTIONS,
        AttentionMaskInterface,
    )

    AttentionInterface.register(SEGMENT_ATTENTION, segment_attention_forward)
    AttentionMaskInterface.register(SEGMENT_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def use_segment_attention(config) -> bool:
    """Switch a transformers model (by its config) whose attention is `sdpa` to `rl_segments`; True when it runs it."""
    if getattr(config, "_attn_implementation", None) == SEGMENT_ATTENTION:
        return True
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    register_segment_attention()
    config._attn_implementation = SEGMENT_ATTENTION
    return True
