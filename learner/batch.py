"""Micro-batches: what one forward pass reads, and where each completion token's logprob comes from.

Two layouts, one output shape:

- **packed** (the default): one row of whole groups, each laid out `[prompt, completion_1, ...,
  completion_n]` with the prompt once. Position ids restart at `len(prompt)` for every completion,
  and a (1, 1, L, L) boolean mask lets each completion token see its group's prompt and its own
  earlier tokens, nothing else. So every completion computes exactly what it would alone, and the
  shared prompt is computed once per group instead of n times.
- **padded**: one row per sample, right-padded to the longest row (the fallback for models whose
  attention cannot take such a mask, and `train.packing: false`).

Both give the completion tokens as a (B, C) grid: row b is the micro-batch's b-th sample, column j
its j-th completion token (C = the longest completion). `source_positions` says, for each real
token of the grid in row-major order, which flattened input position's output predicts it: the
last prompt token for j = 0 (shared by a group's completions), completion token j - 1 otherwise.
Logprobs, entropies, values, advantages and masks all live on that grid, so every loss and GAE
reads the same tensors whatever the layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from learner.segment_attention import Segments, build_segments


@dataclass
class TrainSample:
    prompt_ids: list[int]
    completion_ids: list[int]
    rollout_logprobs: list[float]  # vLLM's sampling logprob of each completion token
    advantage: float  # the sequence's advantage (outcome estimators); 0 under GAE, which works per token
    score: float = 0.0  # the sequence's reward, the last token's reward under GAE
    in_loss: bool = True  # False: e.g. a truncated sample under overlong filtering, masked out of every loss


@dataclass
class MicroBatch:
    input_ids: Tensor  # (R, L) long
    attention_mask: Tensor  # padded: (R, L) long, 1 on real tokens; packed: (1, 1, L, L) bool, True = may attend
    position_ids: Tensor  # (R, L) long
    source_positions: Tensor  # (N,) long, index into the flattened (R * L) outputs; N = real completion tokens
    token_mask: Tensor  # (B, C) bool, the real completion tokens (row-major order = the order of source_positions)
    loss_mask: Tensor  # (B, C) float, token_mask of the samples that are in the loss
    target_ids: Tensor  # (B, C) long, the completion tokens (0 off token_mask)
    rollout_logprobs: Tensor  # (B, C) float, vLLM's logprobs (0 off token_mask)
    advantages: Tensor  # (B,) float
    scores: Tensor  # (B,) float, each sequence's reward
    packed: bool
    sample_index: list[int]  # position of each of the B samples in the list the micro-batch was built from
    segments: Segments | None = None  # packed: the row's prompt and completion spans (learner.segment_attention)

    @property
    def num_loss_tokens(self) -> int:
        return int(self.loss_mask.sum().item())

    @property
    def num_sequences(self) -> int:
        """Samples with at least one token in the loss (the denominator of sequence-mean aggregation)."""
        return int((self.loss_mask.sum(dim=1) > 0).sum().item())

    @property
    def num_input_tokens(self) -> int:
        """Tokens the forward pass actually runs over (no padding counted)."""
        if self.packed:
            return int(self.input_ids.numel())
        return int(self.attention_mask.sum().item())


def check_sample(s: TrainSample) -> None:
    if len(s.rollout_logprobs) != len(s.completion_ids):
        raise ValueError(f"{len(s.rollout_logprobs)} rollout logprobs for {len(s.completion_ids)} completion tokens")
    if not s.prompt_ids:
        raise ValueError("a sample has an empty prompt; the first completion token needs a token to condition on")
    if not s.completion_ids:
        raise ValueError("a sample has an empty completion; there is nothing to train on")


def completion_grid(samples: list[TrainSample], source_positions: list[int]) -> dict:
    """The (B, C) tensors shared by both layouts."""
    width = max(len(s.completion_ids) for s in samples)
    token_mask = torch.zeros((len(samples), width), dtype=torch.bool)
    target_ids = torch.zeros((len(samples), width), dtype=torch.long)
    rollout_logprobs = torch.zeros((len(samples), width), dtype=torch.float32)
    for b, s in enumerate(samples):
        c = len(s.completion_ids)
        token_mask[b, :c] = True
        target_ids[b, :c] = torch.tensor(s.completion_ids, dtype=torch.long)
        rollout_logprobs[b, :c] = torch.tensor(s.rollout_logprobs, dtype=torch.float32)
    in_loss = torch.tensor([s.in_loss for s in samples], dtype=torch.bool).unsqueeze(1)
    return {
        "source_positions": torch.tensor(source_positions, dtype=torch.long),
        "token_mask": token_mask,
        "loss_mask": (token_mask & in_loss).float(),
        "target_ids": target_ids,
        "rollout_logprobs": rollout_logprobs,
        "advantages": torch.tensor([s.advantage for s in samples], dtype=torch.float32),
        "scores": torch.tensor([s.score for s in samples], dtype=torch.float32),
    }


def collate_padded(samples: list[TrainSample], pad_id: int, sample_index: list[int] | None = None) -> MicroBatch:
    """One right-padded row per sample."""
    for s in samples:
        check_sample(s)
    length = max(len(s.prompt_ids) + len(s.completion_ids) for s in samples)
    input_ids = torch.full((len(samples), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
    sources: list[int] = []
    for i, s in enumerate(samples):
        p, c = len(s.prompt_ids), len(s.completion_ids)
        input_ids[i, : p + c] = torch.tensor(s.prompt_ids + s.completion_ids, dtype=torch.long)
        attention_mask[i, : p + c] = 1
        sources += [i * length + p - 1 + j for j in range(c)]  # token j is predicted by position p - 1 + j
    position_ids = torch.arange(length).expand(len(samples), length).clone()
    return MicroBatch(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, packed=False,
                      sample_index=sample_index or list(range(len(samples))), **completion_grid(samples, sources))


def collate_packed(groups: list[list[TrainSample]], sample_index: list[int] | None = None) -> MicroBatch:
    """One row holding every group's prompt once, then each of its completions (see the module docstring).

    A group is a list of samples with the same prompt; the grid's rows are the groups' samples in order.
    """
    tokens: list[int] = []
    positions: list[int] = []
    group_of: list[int] = []  # which group each row position belongs to
    part_of: list[int] = []  # 0 for a prompt token, k for completion k (1-based)
    sources: list[int] = []
    samples: list[TrainSample] = []
    spans: list[tuple[int, int, list[int]]] = []  # (start, prompt length, completion lengths) of each group
    for g, group in enumerate(groups):
        prompt = group[0].prompt_ids
        for s in group:
            check_sample(s)
            if s.prompt_ids != prompt:
                raise ValueError("collate_packed: the samples of a group must share one prompt")
        last_prompt_position = len(tokens) + len(prompt) - 1
        spans.append((len(tokens), len(prompt), [len(s.completion_ids) for s in group]))
        tokens += prompt
        positions += range(len(prompt))
        group_of += [g] * len(prompt)
        part_of += [0] * len(prompt)
        for k, s in enumerate(group, start=1):
            start = len(tokens)
            c = len(s.completion_ids)
            sources += [last_prompt_position] + [start + j for j in range(c - 1)]
            tokens += s.completion_ids
            positions += range(len(prompt), len(prompt) + c)
            group_of += [g] * c
            part_of += [k] * c
            samples.append(s)
    return MicroBatch(
        input_ids=torch.tensor([tokens], dtype=torch.long),
        attention_mask=packed_attention_mask(torch.tensor(group_of), torch.tensor(part_of)),
        position_ids=torch.tensor([positions], dtype=torch.long),
        packed=True,
        sample_index=sample_index or list(range(len(samples))),
        segments=build_segments(spans, len(tokens)),
        **completion_grid(samples, sources),
    )


def packed_attention_mask(group_of: Tensor, part_of: Tensor) -> Tensor:
    """(1, 1, L, L) bool: query i may attend key j iff j <= i, same group, and j is prompt or i's own completion."""
    query_group, key_group = group_of.unsqueeze(1), group_of.unsqueeze(0)  # (L, 1), (1, L)
    query_part, key_part = part_of.unsqueeze(1), part_of.unsqueeze(0)
    causal = torch.ones((len(group_of), len(group_of)), dtype=torch.bool).tril()
    visible = causal & (query_group == key_group) & ((key_part == 0) | (key_part == query_part))
    return visible[None, None]
