"""What the curriculum observes: one |advantage| per sample, computed for the curriculum alone.

DUMP scores a distribution by the mean |A| of its recent samples, with A GRPO's group-normalised
outcome advantage. The training estimator's own advantages do not serve for that: under PPO
(`advantage: gae`) they are per-token and zero at collection time, and under dr_grpo and rloo they
are the raw r - mean, whose scale depends on the reward's scale and so differs across sources.
So the curriculum gets its own signal, the same whatever `train.advantage` is:

    |A_i| = |(v_i - mean_g) / (std_g + eps)| over the samples of one group g (one prompt),

0 for a group whose values are all equal (nothing to learn there) and for a group of one sample
(no baseline). Under `advantage: grpo` this is exactly the training advantage (the same function,
inputs and eps), so DUMP's default behaviour is unchanged.

`v` is the sample's value under `curriculum.ucb.signal`:
- `reward`: the total reward (DUMP).
- `correctness`: the correctness component's verdict, 1 right / 0 wrong (what accuracy counts).
  A format reward that varies inside a group then cannot make a distribution whose answers are
  all wrong look learnable. For a 0/1 component such as `boxed_answer` this equals that
  component's own normalised advantage (standardising is scale-free); for knights_knaves it also
  drops the wrong/unreadable distinction, a format signal inside the component.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from learner.advantages import group_advantages
from rl.coordinator import Trajectory
from rl.curriculum import SIGNALS


def normalised_abs_advantages(values: Sequence[float], eps: float) -> list[float]:
    """|(v - mean) / (std + eps)| of one group's values (sample std, as GRPO); all 0 if they are equal or n < 2."""
    if len(values) < 2:
        return [0.0] * len(values)
    advantages = group_advantages(torch.tensor([list(values)], dtype=torch.float64), eps=eps, normalize_std=True)
    return [abs(a) for a in advantages[0].tolist()]


def sample_value(trajectory: Trajectory, signal: str) -> float:
    """The number a sample contributes to its group's curriculum signal."""
    if signal == "reward":
        return float(trajectory.meta.reward)
    if signal == "correctness":
        correct = trajectory.meta.correct
        if correct is None:
            raise ValueError(
                f"curriculum.ucb.signal=correctness needs a correctness component, but distribution "
                f"{trajectory.meta.distribution!r} has none; mark one reward with `correctness: true` or use signal: reward"
            )
        return 1.0 if correct else 0.0
    raise ValueError(f"unknown curriculum signal {signal!r}; choose one of {list(SIGNALS)}")


def curriculum_signal(trajectories: Sequence[Trajectory], signal: str, eps: float) -> dict[str, list[float]]:
    """Distribution -> the |A| of each of its samples (in input order), grouped by prompt as training groups them."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(trajectories):
        groups[t.group_key].append(i)
    values = [sample_value(t, signal) for t in trajectories]
    signals = [0.0] * len(trajectories)
    for indices in groups.values():
        for i, a in zip(indices, normalised_abs_advantages([values[i] for i in indices], eps)):
            signals[i] = a
    out: dict[str, list[float]] = defaultdict(list)
    for t, a in zip(trajectories, signals):
        out[t.meta.distribution].append(a)
    return dict(out)
