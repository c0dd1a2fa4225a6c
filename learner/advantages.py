"""GRPO group-relative advantages (Shao et al. 2024, "DeepSeekMath", section 4.1.2, outcome supervision).

Each prompt is sampled n times; a sample's advantage is its reward standardised within its group,
so the group itself is the baseline and no value network is needed. Like TRL's GRPOTrainer we use
the sample standard deviation (Bessel's correction). A group whose rewards are all equal carries
no learning signal and gets exactly 0 (not a division of rounding noise by eps).
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Return (r - mean_g) / (std_g + eps) for rewards of shape (G, n): G groups of n samples each."""
    if rewards.ndim != 2:
        raise ValueError(f"rewards must have shape (G, n), got {tuple(rewards.shape)}")
    if rewards.shape[1] < 2:
        raise ValueError(f"GRPO needs at least 2 samples per group to standardise, got n={rewards.shape[1]}")
    rewards = rewards.float()
    mean = rewards.mean(dim=1, keepdim=True)  # (G, 1)
    std = rewards.std(dim=1, keepdim=True)  # (G, 1), Bessel-corrected as in TRL
    advantages = (rewards - mean) / (std + eps)  # (G, n)
    all_equal = (rewards == rewards[:, :1]).all(dim=1, keepdim=True)  # (G, 1)
    return advantages.masked_fill(all_equal, 0.0)
