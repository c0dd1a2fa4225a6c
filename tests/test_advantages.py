import math

import pytest
import torch

from learner.advantages import group_advantages


def test_group_advantages_hand_computed():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 3.0, 3.0, 0.0]])
    # group 0: mean 0.5, Bessel std sqrt((4 * 0.25) / 3) = 0.57735 -> +-0.5 / 0.57735 = +-0.866025
    # group 1: mean 1.5, Bessel std sqrt((4 * 2.25) / 3) = 1.73205 -> +-1.5 / 1.73205 = +-0.866025
    expected = torch.tensor([[0.866025, -0.866025, -0.866025, 0.866025], [-0.866025, 0.866025, 0.866025, -0.866025]])
    torch.testing.assert_close(group_advantages(rewards), expected, atol=1e-5, rtol=0)


def test_group_advantages_uses_bessel_correction():
    # two samples: mean 1.5, Bessel std sqrt(2 * 2.25 / 1) = 2.12132 (population std would give exactly +-1)
    out = group_advantages(torch.tensor([[0.0, 3.0]]))
    torch.testing.assert_close(out, torch.tensor([[-1.5 / math.sqrt(4.5), 1.5 / math.sqrt(4.5)]]), atol=1e-5, rtol=0)


def test_group_with_equal_rewards_gets_exact_zeros():
    # 0.1 is not exact in binary, so the mean may differ from the rewards by rounding; the result must still be 0
    rewards = torch.tensor([[0.1, 0.1, 0.1], [2.0, 2.0, 2.0], [0.0, 1.0, 2.0]])
    out = group_advantages(rewards)
    assert torch.equal(out[:2], torch.zeros(2, 3))
    torch.testing.assert_close(out[2], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-5, rtol=0)


def test_group_advantages_rejects_bad_shapes():
    with pytest.raises(ValueError, match="at least 2 samples"):
        group_advantages(torch.tensor([[1.0], [0.0]]))
    with pytest.raises(ValueError, match=r"\(G, n\)"):
        group_advantages(torch.tensor([1.0, 0.0]))
