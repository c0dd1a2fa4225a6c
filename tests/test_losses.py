import math
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from learner.logprobs import token_entropy
from learner.losses import (
    KL_ESTIMATORS,
    LOSS_AGG_MODES,
    PolicyLossInputs,
    aggregate_loss,
    kl_estimate,
    policy_loss,
    truncated_is_weights,
    value_loss,
)

@dataclass
class GRPOLossInputs:
    learner_logprobs: Tensor  # (B, T) with grad
    old_logprobs: Tensor  # (B, T) detached
    advantages: Tensor  # (B,) one per sequence
    loss_mask: Tensor  # (B, T)
    ref_logprobs: Tensor | None = None


def grpo_loss(inputs: GRPOLossInputs, *, clip_eps: float, kl_coef: float, num_tokens: int):
    """The paper's GRPO (symmetric clip, k3 KL in the loss, token mean) through `policy_loss`."""
    logprobs = inputs.learner_logprobs
    advantages = inputs.advantages.to(logprobs.dtype).unsqueeze(1).expand_as(logprobs)
    loss, metrics = policy_loss(
        PolicyLossInputs(logprobs, inputs.old_logprobs, advantages, inputs.loss_mask, inputs.ref_logprobs),
        clip_low=clip_eps, clip_high=clip_eps, kl_coef=kl_coef, kl_estimator="k3", entropy_coef=0.0, agg="token_mean",
        num_tokens=num_tokens, num_sequences=logprobs.shape[0],
    )
    return loss, {key: metrics[key] for key in ("loss/pg", "loss/kl", "kl", "clip_frac")}


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    return kl_estimate(logprobs, ref_logprobs, "k3")


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


def test_kl_estimators_hand_computed():
    ref = torch.tensor([0.0, 0.0])
    lp = torch.tensor([0.5, -0.3])  # logp - ref = 0.5 and -0.3
    torch.testing.assert_close(kl_estimate(lp, ref, "k1"), torch.tensor([0.5, -0.3]))
    torch.testing.assert_close(kl_estimate(lp, ref, "k2"), torch.tensor([0.125, 0.045]))  # 0.5 * d^2
    # k3 = exp(-d) + d - 1: exp(-0.5) - 0.5 = 0.1065307;  exp(0.3) - 1.3 = 0.0498588
    torch.testing.assert_close(kl_estimate(lp, ref, "k3"), torch.tensor([0.1065307, 0.0498588]), atol=1e-6, rtol=0)
    assert KL_ESTIMATORS == ("k1", "k2", "k3")
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(lp, ref, "k4")


# Per-token losses for the aggregation modes: rows of 3 and 2 completion tokens, 5 in all.
AGG_LOSSES = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
AGG_MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
AGG_EXPECTED = {
    "token_mean": 17 / 5,  # (1 + 2 + 3 + 5 + 6) / 5 = 3.4
    "seq_mean_token_mean": 3.75,  # (6 / 3 + 11 / 2) / 2 = (2 + 5.5) / 2
    "seq_mean_token_sum_norm": 2.125,  # (6 / 4 + 11 / 4) / 2 with length_norm 4
}
# d loss / d l on masked-in tokens: 1/5;  row 0: 1/(3*2), row 1: 1/(2*2);  1/(4*2)
AGG_GRAD = {
    "token_mean": AGG_MASK / 5,
    "seq_mean_token_mean": torch.tensor([[1 / 6, 1 / 6, 1 / 6, 0.0], [0.25, 0.25, 0.0, 0.0]]),
    "seq_mean_token_sum_norm": AGG_MASK / 8,
}


def aggregate(losses, mask, mode):
    return aggregate_loss(losses, mask, mode, num_tokens=5, num_sequences=2, length_norm=4)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_aggregate_loss_hand_computed_with_poisoned_masked_positions(mode):
    losses = AGG_LOSSES.clone()
    losses[0, 3], losses[1, 2], losses[1, 3] = math.nan, math.inf, -math.inf
    losses.requires_grad_(True)
    loss = aggregate(losses, AGG_MASK, mode)
    assert loss.item() == pytest.approx(AGG_EXPECTED[mode], abs=1e-6)
    loss.backward()
    torch.testing.assert_close(losses.grad, AGG_GRAD[mode], atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_aggregate_loss_micro_batches_sum_to_batch_loss(mode):
    parts = [aggregate(AGG_LOSSES[i : i + 1], AGG_MASK[i : i + 1], mode).item() for i in range(2)]
    assert sum(parts) == pytest.approx(AGG_EXPECTED[mode], abs=1e-6)


def test_aggregate_loss_empty_row_contributes_zero():
    loss = aggregate_loss(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1.0, 1.0], [0.0, 0.0]]),
                          "seq_mean_token_mean", num_tokens=2, num_sequences=1)
    assert loss.item() == pytest.approx(1.5)  # (1 + 2) / 2, the empty row adds 0 (not NaN)


def test_aggregate_loss_errors_say_what_to_pass():
    with pytest.raises(ValueError, match="token_mean, seq_mean_token_mean, seq_mean_token_sum_norm"):
        aggregate_loss(AGG_LOSSES, AGG_MASK, "sum", num_tokens=5, num_sequences=2)
    with pytest.raises(ValueError, match="num_tokens"):
        aggregate_loss(AGG_LOSSES, AGG_MASK, "token_mean", num_tokens=0, num_sequences=2)
    with pytest.raises(ValueError, match="num_sequences"):
        aggregate_loss(AGG_LOSSES, AGG_MASK, "seq_mean_token_mean", num_tokens=5, num_sequences=0)
    for bad in (None, 0):
        with pytest.raises(ValueError, match="length_norm"):
            aggregate_loss(AGG_LOSSES, AGG_MASK, "seq_mean_token_sum_norm", num_tokens=5, num_sequences=2, length_norm=bad)


def test_truncated_is_weights_cap_and_masked_positions():
    log_ratio = torch.tensor([[math.log(0.5), math.log(2.0), math.log(5.0), 1000.0], [0.1, -1000.0, 1e4, math.nan]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    old = log_ratio.clone().requires_grad_(True)
    w = truncated_is_weights(old, torch.zeros(2, 4), mask, cap=2.0)
    # 0.5 below the cap; 2 at the cap; 5 -> 2; exp(0.1) = 1.105171; exp(-1000) = 0; masked -> 1
    torch.testing.assert_close(w, torch.tensor([[0.5, 2.0, 2.0, 1.0], [1.105171, 0.0, 1.0, 1.0]]), atol=1e-6, rtol=0)
    assert w.max().item() <= 2.0 and torch.isfinite(w).all() and not w.requires_grad
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weights(old, torch.zeros(2, 4), mask, cap=0.0)


# policy_loss: rows of 3 and 4 completion tokens (7 in all); old logprobs 0 so logprobs = log(ratio).
# Masked positions hold logprobs of +-200 (exp overflows float32) and absurd advantages.
PL_RATIOS = torch.tensor([[1.0, 1.25, 1.4, 1.0, 1.0], [1.0, 0.9, 0.7, 1.5, 1.1]])
PL_MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0, 1.0]])
PL_ADV = torch.tensor([[1.0, 1.0, 1.0, 1e30, -1e30], [1e30, -2.0, -2.0, -2.0, -2.0]])
# per token max(-A r, -A clip(r, 1 - 0.2, 1 + 0.28)):
#   row 0 (A=1):  r=1 -> -1;  r=1.25 -> -1.25 (inside [0.8, 1.28]);  r=1.4 -> max(-1.4, -1.28) = -1.28 (clipped high)
#   row 1 (A=-2): r=0.9 -> 1.8;  r=0.7 -> max(1.4, 1.6) = 1.6 (clipped low);  r=1.5 -> max(3.0, 2.56) = 3.0;  r=1.1 -> 2.2
PL_ROW_SUMS = (-1.0 - 1.25 - 1.28, 1.8 + 1.6 + 3.0 + 2.2)  # (-3.53, 8.6)
PL_PG = sum(PL_ROW_SUMS) / 7  # 5.07 / 7 = 0.724286


def pl_logprobs():
    logprobs = torch.log(PL_RATIOS)
    logprobs[0, 3], logprobs[0, 4], logprobs[1, 0] = 200.0, -200.0, 200.0
    return logprobs.requires_grad_(True)


def pl(logprobs=None, *, clip_low=0.2, clip_high=0.28, kl_coef=0.0, kl_estimator="k3", entropy_coef=0.0,
       agg="token_mean", length_norm=None, **fields):
    inputs = PolicyLossInputs(
        logprobs=pl_logprobs() if logprobs is None else logprobs,
        old_logprobs=torch.zeros(2, 5),
        advantages=PL_ADV,
        mask=PL_MASK,
        **fields,
    )
    return policy_loss(inputs, clip_low=clip_low, clip_high=clip_high, kl_coef=kl_coef, kl_estimator=kl_estimator,
                       entropy_coef=entropy_coef, agg=agg, num_tokens=7, num_sequences=2, length_norm=length_norm)


def test_policy_loss_clip_higher_value_metrics_and_grad():
    logprobs = pl_logprobs()
    loss, metrics = pl(logprobs)
    assert loss.item() == pytest.approx(PL_PG, abs=1e-6)
    assert metrics["loss/pg"] == pytest.approx(PL_PG, abs=1e-6)
    assert metrics["clip_frac"] == pytest.approx(2 / 7)
    assert metrics["clip_frac_high"] == pytest.approx(1 / 7)  # r=1.4, A>0
    assert metrics["clip_frac_low"] == pytest.approx(1 / 7)  # r=0.7, A<0
    assert metrics["kl"] == metrics["loss/kl"] == metrics["loss/entropy"] == 0.0
    assert "entropy" not in metrics and "is_weight" not in metrics
    loss.backward()
    # d/d logprob of -A r = -A r on unclipped tokens, 0 on clipped and masked ones; / 7
    expected_grad = torch.tensor([[-1.0, -1.25, 0.0, 0.0, 0.0], [0.0, 1.8, 0.0, 3.0, 2.2]]) / 7
    torch.testing.assert_close(logprobs.grad, expected_grad, atol=1e-6, rtol=0)


def test_policy_loss_symmetric_clip_differs():
    # clip 0.2 both ways: row 0's r=1.25 is now clipped too: max(-1.25, -1.2) = -1.2, and r=1.4 -> -1.2
    # row 0 sum -1 - 1.2 - 1.2 = -3.4; row 1 unchanged (r=0.7 -> 1.6, r=1.5 -> max(3.0, 2.4) = 3.0): 8.6
    loss, metrics = pl(clip_high=0.2)
    assert loss.item() == pytest.approx((-3.4 + 8.6) / 7, abs=1e-6)
    assert loss.item() != pytest.approx(PL_PG, abs=1e-3)
    assert metrics["clip_frac"] == pytest.approx(3 / 7)
    assert metrics["clip_frac_high"] == pytest.approx(2 / 7)
    assert metrics["clip_frac_low"] == pytest.approx(1 / 7)


@pytest.mark.parametrize(
    "agg, length_norm, expected",
    [
        ("seq_mean_token_mean", None, (-3.53 / 3 + 8.6 / 4) / 2),  # 0.486667
        ("seq_mean_token_sum_norm", 5, (-3.53 / 5 + 8.6 / 5) / 2),  # 0.507
    ],
)
def test_policy_loss_sequence_aggregations(agg, length_norm, expected):
    loss, metrics = pl(agg=agg, length_norm=length_norm)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert metrics["loss/pg"] == pytest.approx(PL_PG, abs=1e-6)  # metrics stay token means


def test_policy_loss_is_weights_scale_pg_term():
    w = torch.tensor([[0.5, 1.0, 2.0, math.inf, math.nan], [math.nan, 1.0, 1.0, 0.25, 2.0]], requires_grad=True)
    loss, metrics = pl(is_weights=w)
    # row 0: -0.5, -1.25, -2.56;  row 1: 1.8, 1.6, 0.75, 4.4  -> (-4.31 + 8.55) / 7 = 0.605714
    assert loss.item() == pytest.approx(4.24 / 7, abs=1e-6)
    assert metrics["loss/pg"] == pytest.approx(4.24 / 7, abs=1e-6)
    assert metrics["is_weight"] == pytest.approx(7.75 / 7, abs=1e-6)  # (0.5 + 1 + 2 + 1 + 1 + 0.25 + 2) / 7
    loss.backward()
    assert w.grad is None  # weights are constants


def test_policy_loss_entropy_bonus():
    entropy = torch.tensor([[0.5, 1.0, 1.5, 100.0, math.nan], [math.inf, 2.0, 0.0, 1.0, 1.0]], requires_grad=True)
    loss, metrics = pl(entropy=entropy, entropy_coef=0.01)
    # mean entropy over the 7 tokens: (0.5 + 1 + 1.5 + 2 + 0 + 1 + 1) / 7 = 1.0 -> loss lowered by 0.01
    assert loss.item() == pytest.approx(PL_PG - 0.01, abs=1e-6)
    assert metrics["entropy"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["loss/entropy"] == pytest.approx(0.01, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(entropy.grad, -0.01 * PL_MASK / 7, atol=1e-7, rtol=0)


@pytest.mark.parametrize(
    "kind, kl_mean",
    [
        ("k1", (3 * 0.5 + 4 * -0.3) / 7),  # 0.3 / 7
        ("k2", (3 * 0.125 + 4 * 0.045) / 7),  # 0.555 / 7
        ("k3", (3 * 0.1065307 + 4 * 0.0498588) / 7),  # 0.5190272 / 7
    ],
)
def test_policy_loss_kl_estimators(kind, kl_mean):
    # logp - ref = 0.5 on row 0, -0.3 on row 1; the masked positions' +-200 stay out
    ref = torch.log(PL_RATIOS) - torch.tensor([[0.5], [-0.3]])
    loss, metrics = pl(ref_logprobs=ref, kl_coef=0.1, kl_estimator=kind)
    assert metrics["kl"] == pytest.approx(kl_mean, abs=1e-6)
    assert metrics["loss/kl"] == pytest.approx(0.1 * kl_mean, abs=1e-6)
    assert loss.item() == pytest.approx(PL_PG + 0.1 * kl_mean, abs=1e-6)


def test_policy_loss_masked_positions_cannot_poison_loss_or_grad_with_all_terms():
    logprobs = pl_logprobs()
    valid = PL_MASK > 0
    # on completion tokens: ref = logp (k3 = 0, and its gradient 1 - exp(0) = 0), weight 1, entropy 0;
    # on masked ones: inf / NaN
    ref = torch.where(valid, torch.log(PL_RATIOS), math.inf)
    is_weights = torch.where(valid, 1.0, math.nan)
    entropy = torch.where(valid, 0.0, math.inf).requires_grad_(True)
    loss, metrics = pl(logprobs, ref_logprobs=ref, kl_coef=0.1, is_weights=is_weights, entropy=entropy, entropy_coef=0.01)
    assert loss.item() == pytest.approx(PL_PG, abs=1e-6)
    assert all(math.isfinite(v) for v in metrics.values())
    loss.backward()
    expected_grad = torch.tensor([[-1.0, -1.25, 0.0, 0.0, 0.0], [0.0, 1.8, 0.0, 3.0, 2.2]]) / 7  # as without the extras
    torch.testing.assert_close(logprobs.grad, expected_grad, atol=1e-6, rtol=0)
    torch.testing.assert_close(entropy.grad, torch.where(valid, -0.01 / 7, 0.0), atol=1e-8, rtol=0)


def test_policy_loss_errors_say_the_fix():
    with pytest.raises(ValueError, match="ref_logprobs"):
        pl(kl_coef=0.1)
    with pytest.raises(ValueError, match="entropy"):
        pl(entropy_coef=0.01)
    with pytest.raises(ValueError, match="k1, k2, k3"):
        pl(kl_estimator="kl")
    with pytest.raises(ValueError, match="token_mean"):
        pl(agg="mean")
    with pytest.raises(ValueError, match="length_norm"):
        pl(agg="seq_mean_token_sum_norm")


# value_loss: rows of 3 and 2 tokens (5 in all), clip 0.2
VALUES = torch.tensor([[1.0, 0.5, 2.0], [0.0, 3.0, math.inf]])
OLD_VALUES = torch.tensor([[0.9, 1.0, 1.0], [0.0, 3.5, math.nan]])
RETURNS = torch.tensor([[1.2, 0.0, 1.5], [1.0, 3.0, math.inf]])
V_MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def test_value_loss_clipped_hand_computed():
    values = VALUES.clone().requires_grad_(True)
    loss, metrics = value_loss(values, OLD_VALUES, RETURNS, V_MASK, clip=0.2, num_tokens=5)
    # 0.5 * max((v - R)^2, (v_clipped - R)^2), v_clipped = old + clamp(v - old, -0.2, 0.2):
    #   (0,0): v - old = 0.1 -> v_c = 1.0; both 0.04 -> 0.02
    #   (0,1): v - old = -0.5 -> v_c = 0.8; max(0.25, 0.64) -> 0.32 (clipped term larger)
    #   (0,2): v - old = 1.0 -> v_c = 1.2; max(0.25, 0.09) -> 0.125
    #   (1,0): v_c = 0; 1 -> 0.5
    #   (1,1): v - old = -0.5 -> v_c = 3.3; max(0, 0.09) -> 0.045 (clipped term larger)
    # sum 1.01 / 5 = 0.202
    assert loss.item() == pytest.approx(1.01 / 5, abs=1e-6)
    assert metrics["loss/value"] == pytest.approx(1.01 / 5, abs=1e-6)
    assert metrics["value_clip_frac"] == pytest.approx(2 / 5)
    assert metrics["value_mean"] == pytest.approx(6.5 / 5, abs=1e-6)  # (1 + 0.5 + 2 + 0 + 3) / 5
    loss.backward()
    # (v - R) / 5 where the unclipped term is active, 0 where the clipped one is, 0 on the masked token
    torch.testing.assert_close(values.grad, torch.tensor([[-0.2, 0.0, 0.5], [-1.0, 0.0, 0.0]]) / 5, atol=1e-6, rtol=0)


def test_value_loss_unclipped_hand_computed():
    values = VALUES.clone().requires_grad_(True)
    loss, metrics = value_loss(values, OLD_VALUES, RETURNS, V_MASK, clip=None, num_tokens=5)
    # 0.5 * (v - R)^2: 0.02, 0.125, 0.125, 0.5, 0 -> 0.77 / 5
    assert loss.item() == pytest.approx(0.77 / 5, abs=1e-6)
    assert metrics["value_clip_frac"] == 0.0
    loss.backward()
    torch.testing.assert_close(values.grad, torch.tensor([[-0.2, 0.5, 0.5], [-1.0, 0.0, 0.0]]) / 5, atol=1e-6, rtol=0)


def test_token_entropy_hand_computed():
    p = torch.tensor([0.5, 0.25, 0.25])
    logits = torch.stack(
        [
            torch.stack([torch.log(p), torch.zeros(3)]),  # uniform over 3 -> log 3
            torch.stack([torch.log(p) + 7.0, torch.tensor([30.0, 0.0, 0.0])]),  # shift-invariant; near one-hot -> ~0
        ]
    ).to(torch.bfloat16)  # (B=2, T=2, V=3)
    # H(0.5, 0.25, 0.25) = 0.5 ln 2 + 2 * 0.25 ln 4 = 1.5 ln 2 = 1.039721
    expected = torch.tensor([[1.5 * math.log(2), math.log(3)], [1.5 * math.log(2), 0.0]])
    out = token_entropy(logits)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=2e-2, rtol=0)  # bf16 logits: log(p) itself is rounded
    torch.testing.assert_close(token_entropy(logits.float()), token_entropy(logits.float() + 3.0))
    exact = token_entropy(torch.log(p).view(1, 1, 3))
    assert exact.item() == pytest.approx(1.5 * math.log(2), abs=1e-6)
