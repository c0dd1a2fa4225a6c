"""GRPO's clipped surrogate loss with a k3 KL penalty, as a pure function of tensors.

Reference: Shao et al. 2024, "DeepSeekMath", eq. (3) and (4). Where we depart from it:

- **Token-level aggregation** (DAPO, Yu et al. 2025, section 3.3) instead of the paper's mean over
  each sequence's tokens followed by a mean over sequences: per-token losses are summed over every
  completion token and divided by `num_tokens`, the completion-token count of the WHOLE batch.
  Every token weighs the same, so long answers are not down-weighted per token, and the losses of
  a batch's micro-batches sum to exactly the batch's token mean (gradient accumulation is exact).
- **KL inside the loss with the k3 estimator** (Schulman 2020, "Approximating KL Divergence"), as
  the paper does, rather than as a per-token reward penalty as in PPO-RLHF. It is taken on the
  sampled tokens without an importance ratio. `kl_coef=0` (DAPO's and Dr. GRPO's choice) drops it
  and with it the need for a reference model.
- The paper maximises min(ratio * A, clip(ratio) * A); we minimise the equivalent
  max(-A * ratio, -A * clip(ratio)).

Metrics are this micro-batch's share of the batch mean: a sum over its completion tokens divided
by `num_tokens`. Summing the metric dicts of a batch's micro-batches gives batch token means.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class GRPOLossInputs:
    learner_logprobs: Tensor  # (B, T) logprobs of the taken tokens under the current policy, with grad
    old_logprobs: Tensor  # (B, T) logprobs under the policy the ratio is taken against (detached)
    advantages: Tensor  # (B,) one per sequence, broadcast over its tokens
    loss_mask: Tensor  # (B, T) 1 on completion tokens, 0 on prompt and padding
    ref_logprobs: Tensor | None = None  # (B, T) frozen reference policy; None when kl_coef == 0


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref) on tokens sampled from pi; >= 0, unbiased, low variance."""
    log_ratio = ref_logprobs - logprobs  # log(pi_ref / pi)
    return torch.exp(log_ratio) - log_ratio - 1


def grpo_loss(inputs: GRPOLossInputs, *, clip_eps: float, kl_coef: float, num_tokens: int) -> tuple[Tensor, dict[str, float]]:
    """Return (scalar loss, metrics): this micro-batch's share of the batch's token-mean GRPO loss."""
    if num_tokens <= 0:
        raise ValueError(f"num_tokens must be the batch's completion-token count (> 0), got {num_tokens}")
    if kl_coef > 0 and inputs.ref_logprobs is None:
        raise ValueError("kl_coef > 0 needs ref_logprobs; build a reference model or set kl_coef: 0")
    mask = inputs.loss_mask.to(inputs.learner_logprobs.dtype)  # (B, T)
    valid = mask > 0  # (B, T); values outside it are zeroed before exp so padding can never overflow
    advantages = inputs.advantages.to(mask.dtype).unsqueeze(1)  # (B, 1)

    log_ratio = torch.where(valid, inputs.learner_logprobs - inputs.old_logprobs.detach(), 0.0)  # (B, T)
    ratio = torch.exp(log_ratio)
    pg_loss_unclipped = -advantages * ratio
    pg_loss_clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    pg_loss = torch.maximum(pg_loss_unclipped, pg_loss_clipped)  # pessimistic bound, PPO eq. (7)

    if inputs.ref_logprobs is not None:
        kl = kl_k3(torch.where(valid, inputs.learner_logprobs, 0.0), torch.where(valid, inputs.ref_logprobs, 0.0))
    else:
        kl = torch.zeros_like(pg_loss)
    per_token_loss = pg_loss + kl_coef * kl  # (B, T)
    loss = (per_token_loss * mask).sum() / num_tokens  # token-level aggregation (DAPO)

    with torch.no_grad():
        clipped = (pg_loss_clipped > pg_loss_unclipped).to(mask.dtype)  # clipped branch active
        kl_share = ((kl * mask).sum() / num_tokens).item()
        metrics = {
            "loss/pg": ((pg_loss * mask).sum() / num_tokens).item(),
            "loss/kl": kl_coef * kl_share,
            "kl": kl_share,
            "clip_frac": ((clipped * mask).sum() / num_tokens).item(),
        }
    return loss, metrics
