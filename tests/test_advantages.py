import math

import pytest
import torch

from learner.advantages import (
    gae,
    group_advantages,
    rloo_advantages,
    token_level_rewards,
)


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


def test_dr_grpo_drops_the_std_but_keeps_exact_zeros():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 3.0, 3.0, 0.0], [0.1, 0.1, 0.1, 0.1]])
    # group 0: mean 0.5 -> +-0.5; group 1: mean 1.5 -> +-1.5 (GRPO gives +-0.866025 to both, see above)
    out = group_advantages(rewards, normalize_std=False)
    expected = torch.tensor([[0.5, -0.5, -0.5, 0.5], [-1.5, 1.5, 1.5, -1.5], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert torch.equal(out[2], torch.zeros(4))
    grpo = group_advantages(rewards)[1]
    torch.testing.assert_close(grpo, torch.tensor([-0.866025, 0.866025, 0.866025, -0.866025]), atol=1e-5, rtol=0)


def test_rloo_hand_computed():
    # n=3, [1, 0, 0]: 1 - mean(0, 0) = 1;  0 - mean(1, 0) = -0.5 (twice)
    torch.testing.assert_close(rloo_advantages(torch.tensor([[1.0, 0.0, 0.0]])), torch.tensor([[1.0, -0.5, -0.5]]))
    # n=4, [1, 0, 2, 5]: 1 - 7/3 = -4/3;  0 - 8/3;  2 - 6/3 = 0;  5 - 3/3 = 4  (= 4/3 * (r - 2))
    torch.testing.assert_close(
        rloo_advantages(torch.tensor([[1.0, 0.0, 2.0, 5.0]])), torch.tensor([[-4 / 3, -8 / 3, 0.0, 4.0]]), atol=1e-6, rtol=0
    )


def test_rloo_equal_group_gives_exact_zeros_and_needs_two_samples():
    out = rloo_advantages(torch.tensor([[0.1, 0.1, 0.1], [0.0, 1.0, 2.0]]))
    assert torch.equal(out[0], torch.zeros(3))
    torch.testing.assert_close(out[1], torch.tensor([-1.5, 0.0, 1.5]))  # 0 - 1.5; 1 - 1; 2 - 0.5
    with pytest.raises(ValueError, match="RLOO needs at least 2 samples"):
        rloo_advantages(torch.tensor([[1.0], [0.0]]))


# Two rows: row 0 has a prompt column first, row 1 a prompt column and padding at the end.
GAE_MASK = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])


def gae_inputs(junk: float):
    rewards = torch.tensor([[junk, 0.0, 0.0, 1.0], [junk, 0.2, -1.0, junk]])
    values = torch.tensor([[junk, 0.5, 0.6, 0.7], [junk, 0.1, -0.4, junk]])
    return rewards, values


def test_token_level_rewards_score_on_last_token_and_kl_penalty():
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    scores = torch.tensor([1.0, -0.5, 7.0])
    kl = torch.tensor([[math.inf, 0.2, -0.1, 0.4], [math.nan, 0.3, 0.5, math.inf], [1.0, 1.0, 1.0, 1.0]])
    # row 0: -0.1 * [0.2, -0.1, 0.4] + [0, 0, 1] = [-0.02, 0.01, 0.96]
    # row 1: last completion token is column 2 (column 3 is padding): [-0.03, -0.5 - 0.05] = [-0.03, -0.55]
    # row 2: no completion token -> all 0, score and kl ignored
    expected = torch.tensor([[0.0, -0.02, 0.01, 0.96], [0.0, -0.03, -0.55, 0.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(token_level_rewards(scores, mask, kl, kl_coef=0.1), expected, atol=1e-6, rtol=0)
    no_kl = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, -0.5, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(token_level_rewards(scores, mask), no_kl)


def test_token_level_rewards_last_token_after_a_hole():
    out = token_level_rewards(torch.tensor([2.0]), torch.tensor([[1.0, 0.0, 1.0, 0.0]]))
    assert torch.equal(out, torch.tensor([[0.0, 0.0, 2.0, 0.0]]))


def test_gae_hand_computed_and_masked_positions_change_nothing():
    # gamma = 0.9, lam = 0.8 -> gamma * lam = 0.72; V after the last completion token is 0
    # row 0: t3: delta = 1 - 0.7 = 0.3;                  A3 = 0.3
    #        t2: delta = 0.9 * 0.7 - 0.6 = 0.03;         A2 = 0.03 + 0.72 * 0.3 = 0.246
    #        t1: delta = 0.9 * 0.6 - 0.5 = 0.04;         A1 = 0.04 + 0.72 * 0.246 = 0.21712
    # row 1: t2: delta = -1 + 0.4 = -0.6;                A2 = -0.6
    #        t1: delta = 0.2 + 0.9 * -0.4 - 0.1 = -0.26; A1 = -0.26 + 0.72 * -0.6 = -0.692
    expected_adv = torch.tensor([[0.0, 0.21712, 0.246, 0.3], [0.0, -0.692, -0.6, 0.0]])
    # returns = A + V: [0.71712, 0.846, 1.0] and [-0.592, -1.0]
    expected_ret = torch.tensor([[0.0, 0.71712, 0.846, 1.0], [0.0, -0.592, -1.0, 0.0]])
    for junk in (0.0, 1e6, -3e7):
        rewards, values = gae_inputs(junk)
        adv, ret = gae(rewards, values, GAE_MASK, gamma=0.9, lam=0.8)
        torch.testing.assert_close(adv, expected_adv, atol=1e-6, rtol=0)
        torch.testing.assert_close(ret, expected_ret, atol=1e-6, rtol=0)


def test_gae_inf_and_nan_in_masked_positions_do_not_leak():
    rewards, values = gae_inputs(math.inf)
    values[1, 3] = math.nan
    adv, ret = gae(rewards, values, GAE_MASK, gamma=0.9, lam=0.8)
    assert torch.isfinite(adv).all() and torch.isfinite(ret).all()
    assert adv[0, 1].item() == pytest.approx(0.21712, abs=1e-6)


def test_gae_gamma_lam_one_is_reward_to_go_minus_value():
    rewards, values = gae_inputs(1e6)
    adv, ret = gae(rewards, values, GAE_MASK, gamma=1.0, lam=1.0)
    # row 0: reward-to-go 1 at every token -> A = 1 - [0.5, 0.6, 0.7] = [0.5, 0.4, 0.3]
    # row 1: reward-to-go [0.2 - 1, -1] = [-0.8, -1] -> A = [-0.8 - 0.1, -1 + 0.4] = [-0.9, -0.6]
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.5, 0.4, 0.3], [0.0, -0.9, -0.6, 0.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(ret, torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, -0.8, -1.0, 0.0]]), atol=1e-6, rtol=0)


def test_gae_lam_zero_is_one_step_td_error():
    rewards, values = gae_inputs(1e6)
    adv, _ = gae(rewards, values, GAE_MASK, gamma=0.9, lam=0.0)
    # the deltas worked out above
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.04, 0.03, 0.3], [0.0, -0.26, -0.6, 0.0]]), atol=1e-6, rtol=0)


def test_gae_skips_a_hole_without_discounting_across_it():
    # gamma = 0.9, lam = 1; column 1 is masked out, so column 0's "next" is column 2
    # t2: delta = 1 - 0.2 = 0.8; t0: delta = 0.9 * 0.2 - 0.5 = -0.32, A0 = -0.32 + 0.9 * 0.8 = 0.4
    adv, _ = gae(torch.tensor([[0.0, 5.0, 1.0]]), torch.tensor([[0.5, 9.0, 0.2]]), torch.tensor([[1.0, 0.0, 1.0]]), 0.9, 1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.4, 0.0, 0.8]]), atol=1e-6, rtol=0)
