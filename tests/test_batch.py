import pytest
import torch

from learner.batch import TrainSample, build_micro_batches

SAMPLES = [
    TrainSample(prompt_ids=[10, 11], completion_ids=[12, 13, 14], rollout_logprobs=[-0.1, -0.2, -0.3], advantage=1.0),
    TrainSample(prompt_ids=[20, 21, 22], completion_ids=[23], rollout_logprobs=[-0.5], advantage=-1.0),
    TrainSample(prompt_ids=[30], completion_ids=[31, 32], rollout_logprobs=[-0.7, -0.8], advantage=0.5),
]


def test_micro_batches_hand_computed():
    first, second = build_micro_batches(SAMPLES, micro_batch_size=2, pad_id=0)
    # first: padded to its own max length 5
    assert torch.equal(first.input_ids, torch.tensor([[10, 11, 12, 13, 14], [20, 21, 22, 23, 0]]))
    assert torch.equal(first.attention_mask, torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]))
    # column t scores input_ids[t + 1]: row 0's completion tokens sit at positions 2..4 -> columns 1..3
    assert torch.equal(first.loss_mask, torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]]))
    assert torch.equal(first.rollout_logprobs, torch.tensor([[0.0, -0.1, -0.2, -0.3], [0.0, 0.0, -0.5, 0.0]]))
    assert torch.equal(first.advantages, torch.tensor([1.0, -1.0]))
    assert first.num_loss_tokens == 4
    # second: a single sample, padded to its own length 3
    assert torch.equal(second.input_ids, torch.tensor([[30, 31, 32]]))
    assert torch.equal(second.loss_mask, torch.tensor([[1.0, 1.0]]))
    assert torch.equal(second.rollout_logprobs, torch.tensor([[-0.7, -0.8]]))
    assert second.input_ids.dtype == torch.long and second.loss_mask.dtype == torch.float32


def test_loss_mask_marks_exactly_the_predicted_completion_tokens():
    (batch,) = build_micro_batches(SAMPLES, micro_batch_size=3, pad_id=0)
    completion_tokens = {12, 13, 14, 23, 31, 32}
    predicted = batch.input_ids[:, 1:]  # (B, L-1), what column t scores
    expected = torch.tensor([[tok in completion_tokens for tok in row] for row in predicted.tolist()], dtype=torch.float32)
    assert torch.equal(batch.loss_mask, expected)


def test_bad_samples_raise():
    bad = TrainSample(prompt_ids=[1], completion_ids=[2, 3], rollout_logprobs=[-0.1], advantage=0.0)
    with pytest.raises(ValueError, match="rollout logprobs"):
        build_micro_batches([bad], micro_batch_size=1, pad_id=0)
    with pytest.raises(ValueError, match="micro_batch_size"):
        build_micro_batches(SAMPLES, micro_batch_size=0, pad_id=0)
