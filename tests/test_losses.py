import math

import pytest
import torch

from learner.losses import GRPOLossInputs, grpo_loss, kl_k3

# Two sequences, three tokens; ratios chosen by hand, old logprobs 0 so learner = log(ratio).
RATIOS = torch.tensor([[1.0, 1.5, 0.5], [1.1, 0.7, 2.0]])
ADVANTAGES = torch.tensor([1.0, -2.0])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])  # 5 completion tokens
# per token max(-A r, -A clip(r, 0.8, 1.2)):
#   row 0 (A=1):  r=1 -> -1;  r=1.5 -> max(-1.5, -1.2) = -1.2 (clipped);  masked
#   row 1 (A=-2): r=1.1 -> 2.2;  r=0.7 -> max(1.4, 1.6) = 1.6 (clipped);  r=2 -> max(4.0, 2.4) = 4.0
PG_SUM = -1.0 - 1.2 + 2.2 + 1.6 + 4.0  # 5.6


def make_inputs(ref_logprobs=None, learner=None):
    learner = torch.log(RATIOS).requires_grad_(True) if learner is None else learner
    return GRPOLossInputs(
        learner_logprobs=learner,
        old_logprobs=torch.zeros(2, 3),
        advantages=ADVANTAGES,
        loss_mask=MASK,
        ref_logprobs=ref_logprobs,
    )


def test_kl_k3_hand_computed():
    lp, ref = torch.log(torch.tensor([0.5, 0.3])), torch.log(torch.tensor([0.25, 0.3]))
    # ref/pi = 0.5 -> 0.5 - log(0.5) - 1 = 0.193147; equal policies -> 0
    torch.testing.assert_close(kl_k3(lp, ref), torch.tensor([0.5 - math.log(0.5) - 1, 0.0]), atol=1e-6, rtol=0)
    x, y = torch.randn(1000), torch.randn(1000)
    assert (kl_k3(x, y) >= 0).all()


def test_grpo_loss_hand_computed_value_metrics_and_grad():
    inputs = make_inputs()
    loss, metrics = grpo_loss(inputs, clip_eps=0.2, kl_coef=0.0, num_tokens=5)
    assert loss.item() == pytest.approx(PG_SUM / 5, abs=1e-6)
    assert metrics["loss/pg"] == pytest.approx(PG_SUM / 5, abs=1e-6)
    assert metrics["clip_frac"] == pytest.approx(2 / 5)
    assert metrics["kl"] == 0.0 and metrics["loss/kl"] == 0.0
    loss.backward()
    # d/d logprob of -A * r = -A * r on unclipped tokens, 0 on clipped and masked ones; divided by num_tokens
    expected_grad = torch.tensor([[-1.0, 0.0, 0.0], [2.0 * 1.1, 0.0, 2.0 * 2.0]]) / 5
    torch.testing.assert_close(inputs.learner_logprobs.grad, expected_grad, atol=1e-6, rtol=0)


def test_grpo_loss_with_k3_kl():
    ref = torch.log(RATIOS) + math.log(0.5)  # ref/pi = 0.5 on every token -> k3 = 0.193147 each
    loss, metrics = grpo_loss(make_inputs(ref_logprobs=ref), clip_eps=0.2, kl_coef=0.1, num_tokens=5)
    k3 = 0.5 - math.log(0.5) - 1
    assert metrics["kl"] == pytest.approx(k3, abs=1e-6)
    assert metrics["loss/kl"] == pytest.approx(0.1 * k3, abs=1e-6)
    assert loss.item() == pytest.approx(PG_SUM / 5 + 0.1 * k3, abs=1e-6)


def test_micro_batch_losses_sum_to_batch_token_mean():
    full, full_metrics = grpo_loss(make_inputs(), clip_eps=0.2, kl_coef=0.0, num_tokens=5)
    parts = [
        grpo_loss(
            GRPOLossInputs(torch.log(RATIOS[i : i + 1]), torch.zeros(1, 3), ADVANTAGES[i : i + 1], MASK[i : i + 1], None),
            clip_eps=0.2,
            kl_coef=0.0,
            num_tokens=5,
        )
        for i in range(2)
    ]
    # row 0 alone: (-1 - 1.2) / 5; a per-micro-batch mean would give (-2.2 / 2 + 7.8 / 3) / 2 instead
    assert parts[0][0].item() == pytest.approx(-2.2 / 5, abs=1e-6)
    assert sum(loss.item() for loss, _ in parts) == pytest.approx(full.item(), abs=1e-6)
    for key in full_metrics:
        assert sum(m[key] for _, m in parts) == pytest.approx(full_metrics[key], abs=1e-6)


def test_masked_positions_cannot_poison_loss_or_grad():
    learner = torch.log(RATIOS)
    learner[0, 2] = 200.0  # exp(200) overflows float32, but the position is masked
    learner.requires_grad_(True)
    loss, _ = grpo_loss(make_inputs(learner=learner), clip_eps=0.2, kl_coef=0.0, num_tokens=5)
    loss.backward()
    assert loss.item() == pytest.approx(PG_SUM / 5, abs=1e-6)
    assert torch.isfinite(learner.grad).all() and learner.grad[0, 2] == 0


def test_grpo_loss_errors_say_the_fix():
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(make_inputs(), clip_eps=0.2, kl_coef=0.1, num_tokens=5)
    with pytest.raises(ValueError, match="num_tokens"):
        grpo_loss(make_inputs(), clip_eps=0.2, kl_coef=0.0, num_tokens=0)
