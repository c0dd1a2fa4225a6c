"""PPO-family policy and value losses (GRPO, DAPO, Dr. GRPO, PPO-RLHF) as pure functions of tensors.

`policy_loss` is GRPO as in Shao et al. 2024, "DeepSeekMath", eq. (3) and (4), with the knobs of
its successors. Where we depart from the paper by default:

- **Token-level aggregation** (DAPO, Yu et al. 2025, section 3.3) instead of the paper's mean over
  each sequence's tokens followed by a mean over sequences: per-token losses are summed over every
  completion token and divided by `num_tokens`, the completion-token count of the WHOLE batch.
  Every token weighs the same, so long answers are not down-weighted per token. `aggregate_loss`
  also offers the paper's "seq_mean_token_mean" and Dr. GRPO's "seq_mean_token_sum_norm" (Liu et al.
  2025, section 3.1: divide each sequence's sum by a constant, so length does not scale the
  gradient). In every mode the denominators are the whole batch's, so the losses of a batch's
  micro-batches sum to exactly the batch loss (gradient accumulation is exact).
- **KL inside the loss** (k3 by default; Schulman 2020, "Approximating KL Divergence"), as the paper
  does, rather than as a per-token reward penalty as in PPO-RLHF (see advantages.token_level_rewards).
  It is taken on the sampled tokens without an importance ratio. `kl_coef=0` (DAPO's and Dr.
  GRPO's choice) drops it and with it the need for a reference model.
- The paper maximises min(ratio * A, clip(ratio) * A); we minimise the equivalent
  max(-A * ratio, -A * clip(ratio)).

`policy_loss` further has DAPO's clip-higher (separate lower and upper clip ranges, section 3.1),
truncated importance weights for the sampler/learner mismatch (Yao et al. 2025, "Your Efficient RL
Framework Secretly Brings You Off-Policy RL Training"), and an entropy bonus. `value_loss` is PPO's
clipped value loss (the PPO2 baselines, OpenRLHF).

Masked-out positions (prompt, padding) are selected away with torch.where before any exp, never
multiplied by 0, so inf or NaN there can reach neither the loss nor the gradient.

Metrics are this micro-batch's share of the batch TOKEN mean whatever the aggregation: a sum over
its completion tokens divided by `num_tokens`. Summing the metric dicts of a batch's micro-batches
gives batch token means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

KL_ESTIMATORS = ("k1", "k2", "k3")
LOSS_AGG_MODES = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, kind: str) -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) on tokens sampled from pi (Schulman 2020).

    k1 = log(pi / pi_ref): unbiased, high variance, can be negative. k2 = 0.5 * log(pi / pi_ref)^2:
    biased, low variance, >= 0. k3 = pi_ref/pi - log(pi_ref/pi) - 1: unbiased, low variance, >= 0.
    """
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kind!r}; use one of {', '.join(KL_ESTIMATORS)}")
    log_ratio = logprobs - ref_logprobs  # log(pi / pi_ref)
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    return torch.exp(-log_ratio) + log_ratio - 1


def _masked_share(x: Tensor, valid: Tensor, num_tokens: float) -> float:
    """This micro-batch's share of the batch token mean of x (a python float, no grad)."""
    return (torch.where(valid, x.detach(), 0.0).sum() / num_tokens).item()


def aggregate_loss(
    per_token: Tensor,
    mask: Tensor,
    mode: str,
    *,
    num_tokens: float,
    num_sequences: float,
    length_norm: float | None = None,
) -> Tensor:
    """Reduce (B, T) per-token losses to this micro-batch's share of the batch loss (a scalar).

    num_tokens: completion tokens in the whole batch; num_sequences: sequences (with at least one
    completion token) in the whole batch; length_norm: Dr. GRPO's constant, e.g. the max completion length.
    """
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss aggregation {mode!r}; use one of {', '.join(LOSS_AGG_MODES)}")
    valid = mask > 0  # (B, T)
    losses = torch.where(valid, per_token, 0.0)  # (B, T); selects, so inf/NaN outside the mask cannot leak
    if mode == "token_mean":
        if num_tokens <= 0:
            raise ValueError(f"num_tokens must be the batch's completion-token count (> 0), got {num_tokens}")
        return losses.sum() / num_tokens
    if num_sequences <= 0:
        raise ValueError(f"num_sequences must be the batch's sequence count (> 0), got {num_sequences}")
    if mode == "seq_mean_token_mean":
        row_tokens = valid.sum(dim=1).clamp(min=1)  # (B,); an empty row sums to 0 and stays 0
        return (losses.sum(dim=1) / row_tokens).sum() / num_sequences
    if length_norm is None or length_norm <= 0:
        raise ValueError(
            f"seq_mean_token_sum_norm needs length_norm > 0 (e.g. the max completion length), got {length_norm}"
        )
    return (losses.sum(dim=1) / length_norm).sum() / num_sequences


def truncated_is_weights(old_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, cap: float) -> Tensor:
    """Return (B, T) detached min(pi_old / pi_rollout, cap) on completion tokens, 1 elsewhere (Yao et al. 2025).

    The sampler (vLLM) and the learner compute different logprobs for the same policy, and the sampler
    may lag behind; reweighting by the ratio corrects the bias, truncating at `cap` bounds the variance.
    """
    if cap <= 0:
        raise ValueError(f"cap must be > 0 (e.g. 2.0), got {cap}")
    valid = mask > 0  # (B, T)
    log_ratio = torch.where(valid, (old_logprobs - rollout_logprobs).detach().float(), 0.0)  # (B, T)
    weights = torch.exp(log_ratio.clamp(max=math.log(cap))).clamp(max=cap)  # capped before exp: no overflow
    return torch.where(valid, weights, 1.0)


@dataclass
class PolicyLossInputs:
    logprobs: Tensor  # (B, T) logprobs of the taken tokens under the current policy, with grad
    old_logprobs: Tensor  # (B, T) logprobs under the policy the ratio is taken against (detached)
    advantages: Tensor  # (B, T) per token; callers broadcast sequence advantages over their tokens
    mask: Tensor  # (B, T) 1 on completion tokens, 0 on prompt and padding
    ref_logprobs: Tensor | None = None  # (B, T) frozen reference policy; needed when kl_coef > 0
    is_weights: Tensor | None = None  # (B, T) importance weights, e.g. truncated_is_weights (detached)
    entropy: Tensor | None = None  # (B, T) per-token policy entropy, with grad; needed when entropy_coef > 0


def policy_loss(
    inputs: PolicyLossInputs,
    *,
    clip_low: float,
    clip_high: float,
    kl_coef: float,
    kl_estimator: str,
    entropy_coef: float,
    agg: str,
    num_tokens: float,
    num_sequences: float,
    length_norm: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Return (scalar loss, metrics): this micro-batch's share of the batch's clipped-surrogate loss.

    Per token: is_weight * max(-A * r, -A * clip(r, 1 - clip_low, 1 + clip_high)) + kl_coef * KL
    - entropy_coef * entropy, with r = pi / pi_old, aggregated by `aggregate_loss(mode=agg)`.
    """
    if num_tokens <= 0:
        raise ValueError(f"num_tokens must be the batch's completion-token count (> 0), got {num_tokens}")
    if not (0 <= clip_low < 1 and clip_high >= 0):
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0 (e.g. 0.2 and 0.28), got {clip_low}, {clip_high}")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kl_estimator!r}; use one of {', '.join(KL_ESTIMATORS)}")
    if kl_coef > 0 and inputs.ref_logprobs is None:
        raise ValueError("kl_coef > 0 needs ref_logprobs; build a reference model or set kl_coef: 0")
    if entropy_coef > 0 and inputs.entropy is None:
        raise ValueError("entropy_coef > 0 needs the per-token entropy (learner.logprobs.token_entropy)")
    logprobs = inputs.logprobs
    valid = inputs.mask > 0  # (B, T); values outside it are replaced before exp so padding can never overflow
    advantages = torch.where(valid, inputs.advantages.detach().to(logprobs.dtype), 0.0)  # (B, T)

    log_ratio = torch.where(valid, logprobs - inputs.old_logprobs.detach(), 0.0)  # (B, T)
    ratio = torch.exp(log_ratio)
    pg_unclipped = -advantages * ratio
    pg_clipped = -advantages * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    pg = torch.maximum(pg_unclipped, pg_clipped)  # pessimistic bound, PPO eq. (7)
    if inputs.is_weights is not None:
        pg = pg * torch.where(valid, inputs.is_weights.detach().to(pg.dtype), 1.0)

    kl = None
    per_token = pg  # (B, T)
    if inputs.ref_logprobs is not None:  # also with kl_coef == 0, for the metric
        kl = kl_estimate(torch.where(valid, logprobs, 0.0), torch.where(valid, inputs.ref_logprobs, 0.0), kl_estimator)
        if kl_coef > 0:
            per_token = per_token + kl_coef * kl
    if entropy_coef > 0:
        per_token = per_token - entropy_coef * torch.where(valid, inputs.entropy, 0.0)  # bonus: more entropy, lower loss
    loss = aggregate_loss(
        per_token, inputs.mask, agg, num_tokens=num_tokens, num_sequences=num_sequences, length_norm=length_norm
    )

    with torch.no_grad():
        clipped = valid & (pg_clipped > pg_unclipped)  # (B, T) the clipped branch is the active one
        kl_share = 0.0 if kl is None else _masked_share(kl, valid, num_tokens)
        metrics = {
            "loss/pg": _masked_share(pg, valid, num_tokens),
            "loss/kl": kl_coef * kl_share,
            "kl": kl_share,
            "loss/entropy": 0.0,
            "clip_frac": clipped.sum().item() / num_tokens,
            "clip_frac_low": (clipped & (ratio < 1 - clip_low)).sum().item() / num_tokens,
            "clip_frac_high": (clipped & (ratio > 1 + clip_high)).sum().item() / num_tokens,
        }
        if inputs.entropy is not None:
            metrics["entropy"] = _masked_share(inputs.entropy, valid, num_tokens)
            metrics["loss/entropy"] = entropy_coef * metrics["entropy"]  # the bonus, subtracted from the loss
        if inputs.is_weights is not None:
            metrics["is_weight"] = _masked_share(inputs.is_weights, valid, num_tokens)
    return loss, metrics


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, *, clip: float | None, num_tokens: float
) -> tuple[Tensor, dict[str, float]]:
    """Return (scalar loss, metrics): this micro-batch's share of the batch's token-mean PPO value loss.

    Per token 0.5 * max((v - R)^2, (v_clipped - R)^2) with v_clipped = v_old + clip(v - v_old, -clip, clip):
    like the policy ratio, the value may not profit from moving more than `clip` from the rollout's
    estimate. clip=None gives the plain 0.5 * (v - R)^2.
    """
    if num_tokens <= 0:
        raise ValueError(f"num_tokens must be the batch's completion-token count (> 0), got {num_tokens}")
    if clip is not None and clip <= 0:
        raise ValueError(f"clip must be > 0 (e.g. 0.2) or None for no value clipping, got {clip}")
    valid = mask > 0  # (B, T)
    v = torch.where(valid, values, 0.0)  # (B, T) with grad
    old = torch.where(valid, old_values.detach().to(v.dtype), 0.0)
    target = torch.where(valid, returns.detach().to(v.dtype), 0.0)
    loss_unclipped = (v - target) ** 2
    if clip is None:
        per_token = 0.5 * loss_unclipped
        clipped = torch.zeros_like(valid)
    else:
        v_clipped = old + torch.clamp(v - old, -clip, clip)
        loss_clipped = (v_clipped - target) ** 2
        per_token = 0.5 * torch.maximum(loss_unclipped, loss_clipped)  # pessimistic, as for the policy
        clipped = valid & (loss_clipped > loss_unclipped)  # (B, T)
    loss = torch.where(valid, per_token, 0.0).sum() / num_tokens  # token mean over the whole batch
    metrics = {
        "loss/value": _masked_share(per_token, valid, num_tokens),
        "value_clip_frac": clipped.sum().item() / num_tokens,
        "value_mean": _masked_share(v, valid, num_tokens),
    }
    return loss, metrics
