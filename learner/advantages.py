"""Advantage estimators for policy-gradient RL on LLMs, as pure functions of tensors.

Critic-free, one scalar reward per sampled completion, n completions per prompt ("group"):

- **GRPO** (Shao et al. 2024, "DeepSeekMath", section 4.1.2, outcome supervision): a sample's
  advantage is its reward standardised within its group, A_i = (r_i - mean) / (std + eps), so the
  group itself is the baseline and no value network is needed. Like TRL's GRPOTrainer we use the
  sample standard deviation (Bessel's correction).
- **Dr. GRPO** (Liu et al. 2025, "Understanding R1-Zero-Like Training", section 3.1): A_i = r_i - mean.
  Dividing by the std up-weights groups that are nearly all right or all wrong (small std), a
  question-difficulty bias; `group_advantages(..., normalize_std=False)` drops it.
- **RLOO** (Ahmadian et al. 2024, "Back to Basics", section 3.2): A_i = r_i - mean_{j != i} r_j, the
  baseline of each sample being the mean of the OTHER samples, so it does not depend on r_i and the
  estimate stays unbiased. Equal to n / (n - 1) * (r_i - mean).

In all three a group whose rewards are all equal carries no learning signal and gets exactly 0
(not a division of rounding noise by eps, nor the rounding noise of r - mean).

With a critic (PPO-RLHF, Ouyang et al. 2022; Ziegler et al. 2019), per token on (B, T) tensors:

- `token_level_rewards`: the sequence score on its last completion token, minus kl_coef * KL on every
  completion token.
- `gae`: Generalized Advantage Estimation (Schulman et al. 2016, eq. 16),
  delta_t = r_t + gamma * V_{t+1} - V_t,  A_t = delta_t + gamma * lam * A_{t+1},  returns = A + V.

Masks are 1 on completion tokens and 0 on prompt and padding columns. Masked-out positions are
selected away with torch.where (never multiplied by 0), so inf or NaN there cannot leak.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_groups(rewards: Tensor, method: str) -> None:
    if rewards.ndim != 2:
        raise ValueError(f"rewards must have shape (G, n), got {tuple(rewards.shape)}")
    if rewards.shape[1] < 2:
        raise ValueError(f"{method} needs at least 2 samples per group for a baseline, got n={rewards.shape[1]}")


def group_advantages(rewards: Tensor, eps: float = 1e-6, normalize_std: bool = True) -> Tensor:
    """Return (r - mean_g) / (std_g + eps) for rewards of shape (G, n): G groups of n samples each.

    normalize_std=False gives Dr. GRPO's r - mean_g.
    """
    _check_groups(rewards, "GRPO")
    rewards = rewards.float()
    mean = rewards.mean(dim=1, keepdim=True)  # (G, 1)
    advantages = rewards - mean  # (G, n)
    if normalize_std:
        std = rewards.std(dim=1, keepdim=True)  # (G, 1), Bessel-corrected as in TRL
        advantages = advantages / (std + eps)
    all_equal = (rewards == rewards[:, :1]).all(dim=1, keepdim=True)  # (G, 1)
    return advantages.masked_fill(all_equal, 0.0)


def rloo_advantages(rewards: Tensor) -> Tensor:
    """Return r_i - mean_{j != i} r_j for rewards of shape (G, n), n >= 2."""
    _check_groups(rewards, "RLOO")
    rewards = rewards.float()
    n = rewards.shape[1]
    leave_one_out_mean = (rewards.sum(dim=1, keepdim=True) - rewards) / (n - 1)  # (G, n)
    advantages = rewards - leave_one_out_mean  # (G, n)
    all_equal = (rewards == rewards[:, :1]).all(dim=1, keepdim=True)  # (G, 1)
    return advantages.masked_fill(all_equal, 0.0)


def token_level_rewards(scores: Tensor, mask: Tensor, kl: Tensor | None = None, kl_coef: float = 0.0) -> Tensor:
    """Return (B, T) per-token rewards: score on each row's last completion token, -kl_coef * kl on every one.

    Rewards are constants of the loss, so the inputs are detached. A row without completion tokens is all 0.
    """
    if mask.ndim != 2 or scores.shape != mask.shape[:1]:
        raise ValueError(f"need scores (B,) and mask (B, T), got {tuple(scores.shape)} and {tuple(mask.shape)}")
    valid = mask > 0  # (B, T)
    positions = torch.arange(mask.shape[1], device=mask.device)  # (T,)
    last = torch.where(valid, positions, -1).max(dim=1, keepdim=True).values  # (B, 1); -1 if the row is empty
    is_last = positions == last  # (B, T); never true in an empty row
    rewards = torch.where(is_last, scores.detach().float().unsqueeze(1), 0.0)  # (B, T)
    if kl is not None:
        rewards = torch.where(valid, rewards - kl_coef * kl.detach().float(), rewards)
    return rewards


def gae(token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Return (advantages, returns), both (B, T) and 0 outside the mask.

    "Next" is the next completion token of the same row: masked-out columns (prompt, padding, or a hole
    in the middle) are skipped without discounting, and the value after a row's last completion token
    is 0 (the episode ends there). Loops backwards over T, vectorised over B; inputs are detached.
    """
    if not (token_rewards.shape == values.shape == mask.shape) or mask.ndim != 2:
        raise ValueError(
            f"token_rewards, values and mask must all be (B, T), got "
            f"{tuple(token_rewards.shape)}, {tuple(values.shape)}, {tuple(mask.shape)}"
        )
    valid = mask > 0  # (B, T)
    rewards = torch.where(valid, token_rewards.detach().float(), 0.0)  # (B, T)
    values = torch.where(valid, values.detach().float(), 0.0)  # (B, T)
    advantages = torch.zeros_like(values)  # (B, T)
    next_value = torch.zeros_like(values[:, 0])  # (B,) V of the next completion token; 0 past the last
    next_advantage = torch.zeros_like(values[:, 0])  # (B,)
    for t in reversed(range(mask.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        advantage = delta + gamma * lam * next_advantage  # (B,)
        here = valid[:, t]  # (B,); rows masked out here carry their "next" state through unchanged
        advantages[:, t] = torch.where(here, advantage, 0.0)
        next_value = torch.where(here, values[:, t], next_value)
        next_advantage = torch.where(here, advantage, next_advantage)
    returns = torch.where(valid, advantages + values, 0.0)  # (B, T) targets for the value head
    return advantages, returns
