"""The two micro-batch layouts, by hand: padded rows, and packed rows with shared prompts, position ids and the mask."""

import pytest
import torch

from learner.batch import TrainSample, collate_packed, collate_padded
from learner.plan import Layout, plan_step

SAMPLES = [
    TrainSample(prompt_ids=[10, 11], completion_ids=[12, 13, 14], rollout_logprobs=[-0.1, -0.2, -0.3], advantage=1.0),
    TrainSample(prompt_ids=[20, 21, 22], completion_ids=[23], rollout_logprobs=[-0.5], advantage=-1.0),
    TrainSample(prompt_ids=[30], completion_ids=[31, 32], rollout_logprobs=[-0.7, -0.8], advantage=0.5),
]


def test_padded_micro_batches_hand_computed():
    first, second = plan_step(SAMPLES, Layout(packing=False, micro_batch_size=2))[0].micro_batches
    assert torch.equal(first.input_ids, torch.tensor([[10, 11, 12, 13, 14], [20, 21, 22, 23, 0]]))
    assert torch.equal(first.attention_mask, torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]))
    # the completion grid: row b = sample b, column j = its j-th completion token
    assert torch.equal(first.token_mask, torch.tensor([[True, True, True], [True, False, False]]))
    assert torch.equal(first.target_ids, torch.tensor([[12, 13, 14], [23, 0, 0]]))
    assert torch.equal(first.rollout_logprobs, torch.tensor([[-0.1, -0.2, -0.3], [-0.5, 0.0, 0.0]]))
    # token 12 is predicted by position 1 (token 11), 13 by 2, 14 by 3; row 1 starts at flat index 5: 23 by 5 + 2
    assert first.source_positions.tolist() == [1, 2, 3, 7]
    assert torch.equal(first.advantages, torch.tensor([1.0, -1.0]))
    assert first.num_loss_tokens == 4 and first.num_sequences == 2 and first.num_input_tokens == 9
    assert second.input_ids.tolist() == [[30, 31, 32]] and second.source_positions.tolist() == [0, 1]
    assert second.sample_index == [2]


def test_packed_row_shares_the_prompt_restarts_positions_and_masks_other_completions():
    prompt = [10, 11, 12]
    a = TrainSample(prompt, [20, 21], [-0.1, -0.2], 1.0)
    b = TrainSample(prompt, [30], [-0.3], -1.0)
    other = TrainSample([40, 41], [50, 51], [-0.4, -0.5], 0.5, in_loss=False)
    mb = collate_packed([[a, b], [other]])
    #            prompt       a       b    prompt'   other
    assert mb.input_ids.tolist() == [[10, 11, 12, 20, 21, 30, 40, 41, 50, 51]]
    assert mb.position_ids.tolist() == [[0, 1, 2, 3, 4, 3, 0, 1, 2, 3]]
    # a's first token and b's first token are both predicted by the last prompt token (position 2)
    assert mb.source_positions.tolist() == [2, 3, 2, 7, 8]
    assert torch.equal(mb.target_ids, torch.tensor([[20, 21], [30, 0], [50, 51]]))
    assert torch.equal(mb.loss_mask, torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]]))  # `other` is not in the loss
    mask = mb.attention_mask[0, 0].int()
    assert mask.shape == (10, 10) and mb.packed
    assert mask[5].tolist() == [1, 1, 1, 0, 0, 1, 0, 0, 0, 0]  # b sees the prompt and itself, not a
    assert mask[4].tolist() == [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]  # a's second token sees the prompt and a
    assert mask[9].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]  # the second group sees nothing of the first
    assert mask[1].tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]  # the prompt is causal
    assert mb.num_input_tokens == 10 and mb.num_loss_tokens == 3 and mb.num_sequences == 2


def test_bad_samples_raise():
    bad = TrainSample(prompt_ids=[1], completion_ids=[2, 3], rollout_logprobs=[-0.1], advantage=0.0)
    with pytest.raises(ValueError, match="rollout logprobs"):
        collate_padded([bad], pad_id=0)
    with pytest.raises(ValueError, match="micro_batch_size"):
        plan_step(SAMPLES, Layout(packing=False, micro_batch_size=0))
    with pytest.raises(ValueError, match="share one prompt"):
        collate_packed([[SAMPLES[0], SAMPLES[1]]])
    with pytest.raises(ValueError, match="empty completion"):
        collate_packed([[TrainSample([1], [], [], 0.0)]])
