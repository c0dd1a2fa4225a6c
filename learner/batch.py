"""Turn the loop's samples into right-padded micro-batches aligned with `token_logprobs`.

Alignment: `token_logprobs` returns (B, L-1) where column t scores input_ids[:, t+1]. So the
completion token at sequence position p (p >= len(prompt)) lives in column p - 1 of `loss_mask`
and `rollout_logprobs`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


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
    input_ids: Tensor  # (B, L) long, prompt + completion, right-padded with pad_id
    attention_mask: Tensor  # (B, L) long, 1 on real tokens
    loss_mask: Tensor  # (B, L-1) float, 1 where the predicted token is a completion token
    rollout_logprobs: Tensor  # (B, L-1) float, vLLM's logprobs in the same columns, 0 elsewhere
    advantages: Tensor  # (B,) float
    scores: Tensor  # (B,) float, each sequence's reward

    @property
    def num_loss_tokens(self) -> int:
        return int(self.loss_mask.sum().item())


def collate(samples: list[TrainSample], pad_id: int) -> MicroBatch:
    """Right-pad `samples` to their longest prompt + completion."""
    for s in samples:
        if len(s.rollout_logprobs) != len(s.completion_ids):
            raise ValueError(f"{len(s.rollout_logprobs)} rollout logprobs for {len(s.completion_ids)} completion tokens")
        if not s.prompt_ids:
            raise ValueError("a sample has an empty prompt; the first completion token needs a token to condition on")
    length = max(len(s.prompt_ids) + len(s.completion_ids) for s in samples)
    input_ids = torch.full((len(samples), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
    loss_mask = torch.zeros((len(samples), length - 1), dtype=torch.float32)
    rollout_logprobs = torch.zeros((len(samples), length - 1), dtype=torch.float32)
    for i, s in enumerate(samples):
        p, c = len(s.prompt_ids), len(s.completion_ids)
        input_ids[i, : p + c] = torch.tensor(s.prompt_ids + s.completion_ids, dtype=torch.long)
        attention_mask[i, : p + c] = 1
        loss_mask[i, p - 1 : p + c - 1] = 1.0 if s.in_loss else 0.0  # column t predicts token t+1
        rollout_logprobs[i, p - 1 : p + c - 1] = torch.tensor(s.rollout_logprobs, dtype=torch.float32)
    advantages = torch.tensor([s.advantage for s in samples], dtype=torch.float32)
    scores = torch.tensor([s.score for s in samples], dtype=torch.float32)
    return MicroBatch(input_ids, attention_mask, loss_mask, rollout_logprobs, advantages, scores)


def build_micro_batches(samples: list[TrainSample], micro_batch_size: int, pad_id: int) -> list[MicroBatch]:
    """Split `samples` in order into chunks of `micro_batch_size` (the last may be smaller), each padded to its own max length."""
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    if not samples:
        raise ValueError("no samples to batch")
    return [collate(samples[i : i + micro_batch_size], pad_id) for i in range(0, len(samples), micro_batch_size)]
