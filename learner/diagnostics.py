"""Diagnostics every step logs whatever the algorithm (pure functions of the step's samples and tensors):
groups that teach nothing, the advantages trained with, lengths of right and wrong answers, the
critic's explained variance, and peak memory.

A group whose rewards are all equal has advantage 0 for every sample under every group estimator:
it costs generation and a forward/backward pass and teaches nothing. Their share, per distribution,
says which distributions are too easy or too hard for the policy now.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from rl.coordinator import RolloutJob, Trajectory
from rl.memory import GIB


def zero_spread_metrics(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """`groups/zero_spread_frac`: the share of the step's groups whose rewards are all equal, overall and per distribution."""
    rewards: dict[str, set[float]] = defaultdict(set)
    distribution: dict[str, str] = {}
    for t in trajectories:
        rewards[t.group_key].add(t.meta.reward)
        distribution[t.group_key] = t.meta.distribution
    if not rewards:
        return {}
    flat = {key: len(values) == 1 for key, values in rewards.items()}
    metrics = {"groups/zero_spread_frac": sum(flat.values()) / len(flat)}
    for name in sorted(set(distribution.values())):
        keys = [key for key in flat if distribution[key] == name]
        metrics[f"groups/{name}/zero_spread_frac"] = sum(flat[key] for key in keys) / len(keys)
    return metrics


def advantage_metrics(advantages: Sequence[float]) -> dict[str, float]:
    """`advantage/min`, `advantage/mean`, `advantage/max` of the sequence advantages trained with (none: no keys)."""
    if not advantages:
        return {}
    return {"advantage/min": min(advantages), "advantage/mean": sum(advantages) / len(advantages),
            "advantage/max": max(advantages)}


def length_by_correctness(trajectories: Iterable[Trajectory]) -> dict[str, float]:
    """Mean completion length of the right and of the wrong answers; a key is absent when there are none
    (and both when no reward says what is correct)."""
    lengths: dict[bool, list[int]] = {True: [], False: []}
    for t in trajectories:
        if t.meta.correct is not None:
            lengths[t.meta.correct].append(t.meta.completion_len)
    names = {True: "rollout/response_len_correct", False: "rollout/response_len_wrong"}
    return {names[right]: sum(values) / len(values) for right, values in lengths.items() if values}


def advantage_and_value_sums(advantages: Tensor, returns: Tensor, values: Tensor) -> Tensor:
    """(count, sum A, sum R, sum R^2, sum (R - V), sum (R - V)^2) over 1-D tensors of completion tokens, float64:
    sums, so that they add up over micro-batches and ranks before `gae_metrics` turns them into statistics."""
    a, r, v = (x.detach().double().flatten().cpu() for x in (advantages, returns, values))
    error = r - v
    return torch.stack([torch.tensor(float(a.numel()), dtype=torch.float64), a.sum(), r.sum(), (r * r).sum(),
                        error.sum(), (error * error).sum()])


def gae_metrics(sums: Tensor, low: float, high: float) -> dict[str, float]:
    """PPO's advantage min/mean/max and `critic/explained_variance` = 1 - Var(R - V) / Var(R) from the summed
    statistics; explained variance is absent when the returns do not vary (it is undefined then)."""
    count, advantage_sum, r_sum, r_squares, e_sum, e_squares = sums.tolist()
    if count == 0:
        return {}
    metrics = {"advantage/min": low, "advantage/mean": advantage_sum / count, "advantage/max": high}
    return_variance = r_squares / count - (r_sum / count) ** 2
    if return_variance > 1e-12:
        error_variance = e_squares / count - (e_sum / count) ** 2
        metrics["critic/explained_variance"] = 1.0 - error_variance / return_variance
    return metrics


def step_advantages(trajectories: Sequence[Trajectory], advantages: Sequence[float], estimator: str,
                    eps: float) -> list[float]:
    """Each sample's advantage as the completions log shows it: the sequence advantage trained with; under GAE
    (per-token advantages, computed inside the step) the group-normalised reward (r - mean) / (std + eps) instead,
    GRPO's advantage, whose absolute value is the curriculum's signal."""
    if estimator != "gae":
        return list(advantages)
    from learner.advantages import group_advantages

    groups: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(trajectories):
        groups[t.group_key].append(i)
    out = [0.0] * len(trajectories)
    for indices in groups.values():
        if len(indices) > 1:
            rewards = torch.tensor([[trajectories[i].meta.reward for i in indices]], dtype=torch.float64)
            for i, a in zip(indices, group_advantages(rewards, eps=eps, normalize_std=True)[0].tolist()):
                out[i] = a
    return out


def job_worker_memory(job: RolloutJob) -> dict[int, tuple[int | None, int | None]]:
    """Worker id -> (peak RSS bytes, peak GPU bytes) as the workers that answered the job reported them."""
    memory = {}
    for position, timings in job.timings.items():
        samples = job.results.get(position)
        if samples and timings.peak_rss_bytes is not None:
            memory[samples[0].meta.worker_id] = (timings.peak_rss_bytes, timings.gpu_peak_bytes)
    return memory


def memory_metrics(learner: tuple[int, int | None], workers: dict[int, tuple[int | None, int | None]]) -> dict[str, float]:
    """`memory/learner_peak_rss_gib`, `memory/worker<N>_peak_rss_gib`, and the `..._gpu_peak_gib` of each that has a GPU."""
    metrics: dict[str, float] = {}
    for name, (rss, gpu) in [("learner", learner), *((f"worker{w}", workers[w]) for w in sorted(workers))]:
        if rss is not None:
            metrics[f"memory/{name}_peak_rss_gib"] = rss / GIB
        if gpu is not None:
            metrics[f"memory/{name}_gpu_peak_gib"] = gpu / GIB
    return metrics
