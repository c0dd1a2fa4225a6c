"""Collect one step's samples: send its prompts to the workers, drop stale samples, attach advantages,
and (DAPO's dynamic sampling) keep sampling until enough groups carry signal."""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass

import torch

from envs.source import TaskSource
from learner.advantages import group_advantages, rloo_advantages
from learner.batch import TrainSample
from learner.curriculum_signal import curriculum_signal
from learner.diagnostics import advantage_metrics, job_worker_memory, step_advantages, zero_spread_metrics
from rl.config import Config
from rl.coordinator import Coordinator, RolloutJob, Trajectory, drop_stale
from rl.replies import DYNAMIC_SAMPLING_MAX_FACTOR
from rl.wire import SamplingParams, Task

log = logging.getLogger("learner")


def training_sampling(config: Config, step: int, round_: int = 0) -> SamplingParams:
    """Seeded per step (and dynamic-sampling round), so a resumed run samples what the uninterrupted run would have."""
    r = config.rollout
    return SamplingParams(
        n=r.samples_per_prompt, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_new_tokens,
        seed=(config.run.seed * 1_000_003 + step * 7_919 + round_ * 104_729) % 2**31,
    )


class StepBatch:
    """What one step's rollouts gave: everything generated, and the part that is trained on."""

    def __init__(self, probabilities: dict[str, float]):
        self.probabilities = probabilities  # the curriculum's weights the first prompts were drawn with
        self.generated: list[Trajectory] = []  # every fresh-enough sample of every round (metrics, curriculum)
        self.trained: list[Trajectory] = []
        self.samples: list[TrainSample] = []  # `trained` with advantages, in the same order
        self.rollout_seconds = 0.0  # from submitting the step's prompts to having its samples (async: overlaps training)
        self.wait_seconds = 0.0  # of those, the learner blocked waiting for the workers
        self.generate_seconds = 0.0  # the workers' engines generating, summed over requests (their own account)
        self.dropped_stale = 0
        self.metrics: dict[str, float] = {}
        self.questions: dict[str, str] = {}  # task id -> its question (the last user message), for the completions log
        self.advantages: dict[str, float] = {}  # sample id -> its advantage as the completions log shows it
        self.worker_memory: dict[int, tuple[int | None, int | None]] = {}  # worker id -> peak (RSS, GPU) bytes it reported

    def note_job(self, job: RolloutJob) -> None:
        """What a collected job tells beyond its samples: its tasks' questions and its workers' memory."""
        for chunk in job.chunks:
            self.questions.update((task.task_id, question_of(task)) for task in chunk.tasks)
        self.worker_memory.update(job_worker_memory(job))


def question_of(task: Task) -> str:
    """The question as the env wrote it: the last user message (not the chat template around it)."""
    return next((m.content for m in reversed(task.messages) if m.role == "user"), "")


@dataclass
class SubmittedStep:
    job: RolloutJob
    probabilities: dict[str, float]  # the curriculum's weights its prompts were drawn with
    submitted_at: float


def submit_step(coordinator: Coordinator, source: TaskSource, config: Config, step: int, version: int) -> SubmittedStep:
    probabilities = source.curriculum.weights()
    job = coordinator.submit(source.next_tasks(config.rollout.prompts_per_step), training_sampling(config, step), "train",
                             min_version=version)
    return SubmittedStep(job, probabilities, time.perf_counter())


def collect_step(coordinator: Coordinator, source: TaskSource, config: Config, step: int, version: int,
                 submitted: SubmittedStep) -> StepBatch:
    """Wait for the step's samples; with dynamic sampling, keep sampling until prompts_per_step groups carry signal."""
    batch = StepBatch(submitted.probabilities)
    wanted, rounds, generated_groups = config.rollout.prompts_per_step, 1, 0
    waiting_since = time.perf_counter()
    trajectories = coordinator.collect(submitted.job)
    batch.wait_seconds += time.perf_counter() - waiting_since
    batch.rollout_seconds += time.perf_counter() - submitted.submitted_at
    batch.generate_seconds += submitted.job.generate_seconds
    batch.note_job(submitted.job)
    while True:
        fresh, dropped = drop_stale(trajectories, version, config.rollout.max_staleness)
        batch.dropped_stale += dropped
        samples = with_advantages(fresh, config)
        shown = step_advantages(fresh, [s.advantage for s in samples], config.train.advantage, config.train.adv_eps)
        batch.advantages.update((t.meta.sample_id, a) for t, a in zip(fresh, shown))
        # Each sample counts for the distribution that produced it, dropped groups included (|A| = 0
        # says "too easy or too hard"); evaluation never gets here, so held-out results never steer it.
        # The curriculum's |A| is its own (learner/curriculum_signal.py), whatever the training estimator.
        for name, values in curriculum_signal(fresh, config.curriculum_signal(), config.train.adv_eps).items():
            source.curriculum.observe(name, values)
        batch.generated += fresh
        generated_groups += len({t.group_key for t in fresh})
        if config.train.dynamic_sampling:
            fresh, samples = keep_informative_groups(fresh, samples)
        batch.trained += fresh
        batch.samples += samples
        kept_groups = len({t.group_key for t in batch.trained})
        if not config.train.dynamic_sampling or kept_groups >= wanted or rounds >= config.train.dynamic_sampling_rounds:
            break
        # DAPO: sample more prompts; ask for the shortfall divided by the share of groups kept so far
        keep_rate = max(kept_groups / max(generated_groups, 1), 0.25)
        more = min(DYNAMIC_SAMPLING_MAX_FACTOR * wanted, math.ceil((wanted - kept_groups) / keep_rate))
        start = time.perf_counter()
        job = coordinator.submit(source.next_tasks(more), training_sampling(config, step, rounds), "train", min_version=version)
        trajectories = coordinator.collect(job)
        batch.rollout_seconds += time.perf_counter() - start
        batch.wait_seconds += time.perf_counter() - start
        batch.generate_seconds += job.generate_seconds
        batch.note_job(job)
        rounds += 1
    if config.train.dynamic_sampling:
        batch.trained, batch.samples = first_groups(batch.trained, batch.samples, wanted)
        batch.metrics.update({
            "rollout/dynamic_sampling_rounds": rounds,
            "rollout/groups_generated": generated_groups,
            "rollout/groups_trained": len({t.group_key for t in batch.trained}),
        })
        if len({t.group_key for t in batch.trained}) < wanted:
            log.warning("step %d: only %d of %d groups had unequal rewards after %d rounds of sampling; training on them",
                        step, len({t.group_key for t in batch.trained}), wanted, rounds)
    if config.train.overlong_filter:
        batch.metrics["train/overlong_filtered"] = sum(not s.in_loss for s in batch.samples)
    batch.metrics.update(zero_spread_metrics(batch.generated))
    if config.train.advantage != "gae":  # PPO's advantages are per token, made inside the step (learner.step)
        batch.metrics.update(advantage_metrics([s.advantage for s in batch.samples if s.in_loss]))
    if batch.generated:  # how many versions behind the learner the step's samples are (async: the first round's are 1)
        batch.metrics["rollout/staleness_mean"] = sum(version - t.meta.policy_version for t in batch.generated) / len(batch.generated)
    return batch


def keep_informative_groups(trajectories: list[Trajectory], samples: list[TrainSample]) -> tuple[list[Trajectory], list[TrainSample]]:
    """DAPO's dynamic sampling filter: drop every group whose rewards are all equal (its advantages are all 0)."""
    rewards: dict[str, set[float]] = defaultdict(set)
    for t in trajectories:
        rewards[t.group_key].add(t.meta.reward)
    keep = [i for i, t in enumerate(trajectories) if len(rewards[t.group_key]) > 1]
    return [trajectories[i] for i in keep], [samples[i] for i in keep]


def first_groups(trajectories: list[Trajectory], samples: list[TrainSample], count: int) -> tuple[list[Trajectory], list[TrainSample]]:
    """The samples of the first `count` groups, in order."""
    order = list(dict.fromkeys(t.group_key for t in trajectories))[:count]
    wanted = set(order)
    keep = [i for i, t in enumerate(trajectories) if t.group_key in wanted]
    return [trajectories[i] for i in keep], [samples[i] for i in keep]


def with_advantages(trajectories: list[Trajectory], config: Config) -> list[TrainSample]:
    """Group the trajectories by prompt and attach sequence advantages (0 under GAE, which works per token), in input order."""
    estimator, eps = config.train.advantage, config.train.adv_eps
    groups: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(trajectories):
        groups[t.group_key].append(i)
    advantages = [0.0] * len(trajectories)
    if estimator != "gae":
        for key, indices in groups.items():
            if len(indices) < 2:  # the coordinator refuses such replies; never let one crash the run
                log.warning("group %s has %d sample; it carries no baseline and gets advantage 0", key, len(indices))
                continue
            rewards = torch.tensor([[trajectories[i].meta.reward for i in indices]], dtype=torch.float64)
            if estimator == "rloo":
                values = rloo_advantages(rewards)
            else:
                values = group_advantages(rewards, eps=eps, normalize_std=estimator == "grpo")
            for i, a in zip(indices, values[0].tolist()):
                advantages[i] = a
    return [
        TrainSample(
            prompt_ids=t.prompt_ids.tolist(),
            completion_ids=t.completion_ids.tolist(),
            rollout_logprobs=t.rollout_logprobs.tolist(),
            advantage=a,
            score=float(t.meta.reward),
            # DAPO's overlong filtering: a truncated answer is not judged (neither rewarded nor punished)
            in_loss=not (config.train.overlong_filter and t.meta.finish_reason == "length"),
        )
        for t, a in zip(trajectories, advantages)
    ]

