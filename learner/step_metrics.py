"""What a training step's metrics line holds: rollouts, rewards, the update, the curriculum, the weight
sync, the workers. Assembled in two parts: `step_record` inside the critical section (a stop right
after it still writes the step's line), `finished_step_metrics` once the workers have the weights."""

from __future__ import annotations

import time
from collections import Counter, defaultdict

import torch

from learner.collect import StepBatch
from learner.diagnostics import length_by_correctness, memory_metrics
from rewards.registry import accuracy_of
from rl.config import Config
from rl.coordinator import Coordinator, SyncStats, Trajectory
from rl.memory import gpu_peak_bytes, peak_rss_bytes
from rl.transport import LearnerEndpoint

SKIPPED_UPDATE = {"train/skipped": 1.0}  # the train metrics of a step with nothing to learn from


def step_record(batch: StepBatch, train_metrics: dict[str, float] | None, curriculum, version: int,
                config: Config) -> dict[str, float]:
    """The step's own metrics; `train_metrics` None: the update was skipped."""
    return {**rollout_metrics(batch.generated, batch.rollout_seconds, config), **generation_metrics(batch),
            **(train_metrics if train_metrics is not None else SKIPPED_UPDATE),
            **batch.metrics, **curriculum_metrics(curriculum, batch.probabilities, batch.generated),
            "policy_version": version, "rollout/dropped_stale": batch.dropped_stale,
            **memory_metrics((peak_rss_bytes(), gpu_peak_bytes()), batch.worker_memory)}


def finished_step_metrics(record: dict[str, float], sync: SyncStats | None, coordinator: Coordinator,
                          endpoint: LearnerEndpoint, step_start: float) -> dict[str, float]:
    """The step's record with its weight sync, the workers' state and the step's wall time."""
    return {
        **record,
        **sync_metrics(sync),
        "workers/alive": len(coordinator.workers),
        "workers/lost": len(coordinator.lost),
        "workers/reassigned_requests": coordinator.reassigned_requests,
        "workers/backup_requests": coordinator.backup_requests,
        **rejection_metrics(endpoint.rejected, coordinator.rejected),
        "time/step_seconds": time.perf_counter() - step_start,
    }


def rejection_metrics(malformed: Counter[str], refused: Counter[str]) -> dict[str, int]:
    """Messages dropped so far: `wire/rejected` in all, `wire/rejected/REASON` by reason (malformed on the wire, and
    replies refused by the coordinator, whose workers were dropped)."""
    by_reason = malformed + refused
    return {"wire/rejected": sum(by_reason.values()), **{f"wire/rejected/{reason}": count for reason, count in sorted(by_reason.items())}}


def sync_metrics(sync: SyncStats | None) -> dict[str, float]:
    if sync is None:
        return {}
    return {
        "weight_sync/seconds": max(sync.acked.values(), default=sync.send_seconds),
        "weight_sync/send_seconds": sync.send_seconds,
        "weight_sync/worker_load_seconds": max(sync.load_seconds.values(), default=0.0),
    }


def curriculum_metrics(curriculum, probabilities: dict[str, float], trajectories: list[Trajectory]) -> dict[str, float]:
    """Per distribution: the probability this step drew from, the window mean |A| and sample count after
    observing it, the accuracy and number of this step's samples, and how stale they were."""
    stats = curriculum.stats()
    metrics: dict[str, float] = {}
    for name, probability in probabilities.items():
        metrics[f"curriculum/{name}/probability"] = probability
        if "mean_abs_advantage" in stats[name]:  # the UCB curriculum's window; the baselines keep none
            metrics[f"curriculum/{name}/mean_abs_advantage"] = stats[name]["mean_abs_advantage"]
        metrics[f"curriculum/{name}/count"] = stats[name]["count"]
        step_samples = [t.meta for t in trajectories if t.meta.distribution == name]
        metrics[f"curriculum/{name}/step_samples"] = len(step_samples)
        accuracy = accuracy_of(step_samples)
        if accuracy is not None:
            metrics[f"curriculum/{name}/step_accuracy"] = accuracy
    if trajectories:
        newest = max(t.meta.policy_version for t in trajectories)
        lags = [newest - t.meta.policy_version for t in trajectories]
        metrics["rollout/policy_version_lag_mean"] = sum(lags) / len(lags)
    return metrics


def generation_metrics(batch: StepBatch) -> dict[str, float]:
    """How fast the workers' engines generated (their own account), apart from the learner's wait.

    `rollout/tokens_per_s` divides by the step's rollout span, which in async mode overlaps the
    previous update, so it understates the engines; this divides by their generate time.
    """
    metrics = {"rollout/wait_seconds": batch.wait_seconds, "time/rollout_wait_seconds": batch.wait_seconds}
    if batch.generate_seconds > 0:
        tokens = sum(t.meta.completion_len for t in batch.generated)
        metrics["rollout/generate_seconds"] = batch.generate_seconds
        metrics["rollout/generate_tokens_per_s"] = tokens / batch.generate_seconds
    return metrics


def rollout_metrics(trajectories: list[Trajectory], seconds: float, config: Config) -> dict[str, float]:
    rewards = torch.tensor([t.meta.reward for t in trajectories])
    lengths = torch.tensor([t.meta.completion_len for t in trajectories], dtype=torch.float32)
    metrics = {
        "rollout/reward_mean": rewards.mean().item(),
        "rollout/reward_std": rewards.std().item() if len(rewards) > 1 else 0.0,
        "rollout/accuracy": accuracy_of([t.meta for t in trajectories]),
        "rollout/response_len_mean": lengths.mean().item(),
        "rollout/response_len_max": lengths.max().item(),
        "rollout/truncated_frac": sum(t.meta.finish_reason == "length" for t in trajectories) / len(trajectories),
        "rollout/tokens_per_s": lengths.sum().item() / max(seconds, 1e-9),
        "rollout/seconds": seconds,
        **length_by_correctness(trajectories),
    }
    components: dict[str, list[float]] = defaultdict(list)
    failures: dict[str, int] = defaultdict(int)
    for t in trajectories:
        for name, value in t.meta.reward_components.items():
            components[name].append(value)
            components[f"{t.meta.distribution}/{name}"].append(value)
            failures[name] += name in t.meta.reward_failed
    for name, values in components.items():
        metrics[f"reward/{name}"] = sum(values) / len(values)
    for name, count in failures.items():
        metrics[f"reward_errors/{name}"] = count
    return metrics
