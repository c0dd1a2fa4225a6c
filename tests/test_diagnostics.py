"""The diagnostics every step logs, as pure functions: zero-spread groups, advantages, lengths by
correctness, PPO's explained variance, peak memory and its GPU guard."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from learner.diagnostics import (
    advantage_and_value_sums,
    advantage_metrics,
    gae_metrics,
    job_worker_memory,
    length_by_correctness,
    memory_metrics,
    step_advantages,
    zero_spread_metrics,
)
from learner.logprobs import token_entropy, token_entropy_no_grad
from rl.coordinator import RolloutJob, Trajectory
from rl.memory import GIB, gpu_peak_bytes, peak_rss_bytes
from rl.wire import RolloutTimings, SampleMeta


def sample(group: str, index: int, reward: float, distribution: str = "d", correct=None, length: int = 2,
           worker: int = 0) -> Trajectory:
    meta = SampleMeta(sample_id=f"{group}-s{index}", task_id=group, distribution=distribution, prompt_len=2,
                      completion_len=length, reward=reward, reward_components={"r": reward}, correct=correct,
                      finish_reason="stop", policy_version=0, worker_id=worker, text=f"answer {index}")
    return Trajectory(meta, np.array([1, 2], np.int32), np.zeros(length, np.int32), np.zeros(length, np.float32))


def test_zero_spread_share_overall_and_per_distribution():
    step = ([sample("w0-r0-t0", i, r, "easy") for i, r in enumerate([1.0, 1.0])]  # flat
            + [sample("w0-r0-t1", i, r, "easy") for i, r in enumerate([1.0, 0.0])]
            + [sample("w0-r0-t2", i, r, "hard") for i, r in enumerate([0.0, 0.0])]  # flat
            + [sample("w0-r0-t3", i, r, "hard") for i, r in enumerate([0.0, 0.0])])  # flat
    assert zero_spread_metrics(step) == {"groups/zero_spread_frac": 3 / 4, "groups/easy/zero_spread_frac": 1 / 2,
                                         "groups/hard/zero_spread_frac": 1.0}
    assert zero_spread_metrics([]) == {}


def test_advantage_stats_and_length_by_correctness():
    assert advantage_metrics([-1.0, 0.5, 2.0]) == {"advantage/min": -1.0, "advantage/mean": 0.5, "advantage/max": 2.0}
    assert advantage_metrics([]) == {}
    step = [sample("g", 0, 1.0, correct=True, length=4), sample("g", 1, 0.0, correct=False, length=10),
            sample("g", 2, 1.0, correct=True, length=6), sample("g", 3, 0.5, correct=None, length=99)]
    assert length_by_correctness(step) == {"rollout/response_len_correct": 5.0, "rollout/response_len_wrong": 10.0}
    assert length_by_correctness(step[:1]) == {"rollout/response_len_correct": 4.0}  # no wrong answer: no key
    assert length_by_correctness(step[3:]) == {}  # no reward says what is correct


def test_explained_variance_and_advantages_from_summed_statistics():
    returns = torch.tensor([1.0, 2.0, 3.0, 4.0])
    values = torch.tensor([1.5, 1.5, 3.5, 3.5])
    advantages = torch.tensor([-1.0, 0.0, 0.5, 0.5])
    halves = advantage_and_value_sums(advantages[:2], returns[:2], values[:2]) + \
        advantage_and_value_sums(advantages[2:], returns[2:], values[2:])  # two micro-batches add up
    metrics = gae_metrics(halves, low=-1.0, high=0.5)
    expected = 1 - torch.var(returns - values, unbiased=False) / torch.var(returns, unbiased=False)
    assert metrics["critic/explained_variance"] == pytest.approx(expected.item()) and expected.item() == pytest.approx(0.8)
    assert metrics["advantage/mean"] == 0.0 and metrics["advantage/min"] == -1.0 and metrics["advantage/max"] == 0.5
    flat = advantage_and_value_sums(advantages, torch.ones(4), values)
    assert "critic/explained_variance" not in gae_metrics(flat, -1.0, 0.5)  # returns that do not vary: undefined
    assert gae_metrics(torch.zeros(6, dtype=torch.float64), math.inf, -math.inf) == {}


def test_completions_show_grpo_advantages_under_gae_and_the_trained_ones_otherwise():
    step = [sample("g", i, r) for i, r in enumerate([1.0, 0.0, 0.0, 1.0])]
    assert step_advantages(step, [0.1, 0.2, 0.3, 0.4], "rloo", 1e-6) == [0.1, 0.2, 0.3, 0.4]
    shown = step_advantages(step, [0.0] * 4, "gae", 1e-6)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std().item()
    assert shown == pytest.approx([0.5 / std, -0.5 / std, -0.5 / std, 0.5 / std], rel=1e-5)


def test_each_worker_reports_its_own_peak_memory_and_gpu_only_where_it_has_one():
    job = RolloutJob("train", 0)
    job.results = {0: [sample("w0-r0-t0", 0, 1.0, worker=0)], 1: [sample("w3-r1-t0", 0, 1.0, worker=3)],
                   2: [sample("w5-r2-t0", 0, 1.0, worker=5)]}
    job.timings = {0: RolloutTimings(generate_seconds=1, score_seconds=0, worker_seconds=1, peak_rss_bytes=2 * GIB),
                   1: RolloutTimings(generate_seconds=1, score_seconds=0, worker_seconds=1, peak_rss_bytes=GIB,
                                     gpu_peak_bytes=3 * GIB),
                   2: RolloutTimings(generate_seconds=1, score_seconds=0, worker_seconds=1)}  # an older worker: no memory
    workers = job_worker_memory(job)
    assert workers == {0: (2 * GIB, None), 3: (GIB, 3 * GIB)}
    assert memory_metrics((GIB // 2, None), workers) == {
        "memory/learner_peak_rss_gib": 0.5, "memory/worker0_peak_rss_gib": 2.0,
        "memory/worker3_peak_rss_gib": 1.0, "memory/worker3_gpu_peak_gib": 3.0}


class FakeCuda:
    def __init__(self, available: bool, initialized: bool, reserved: list[int]):
        self.available, self.initialized, self.reserved = available, initialized, reserved

    def is_available(self):
        return self.available

    def is_initialized(self):
        return self.initialized

    def device_count(self):
        return len(self.reserved)

    def max_memory_reserved(self, device):
        return self.reserved[device]


def test_gpu_peak_only_where_cuda_is_in_use_and_the_largest_device():
    assert gpu_peak_bytes(FakeCuda(False, False, [])) is None
    assert gpu_peak_bytes(FakeCuda(True, False, [5])) is None  # never used here: asking must not start a context
    assert gpu_peak_bytes(FakeCuda(True, True, [5, 9, 7])) == 9
    if not torch.cuda.is_available():
        assert gpu_peak_bytes() is None  # the CPU test machines


def test_peak_rss_is_the_os_peak_in_bytes(monkeypatch):
    from rl import memory

    assert peak_rss_bytes() > 50 * 2**20  # this Python with torch loaded
    monkeypatch.setattr(memory.resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=1536))
    monkeypatch.setattr(memory.sys, "platform", "linux")
    assert peak_rss_bytes() == 1536 * 1024  # Linux reports KiB


def test_entropy_without_grad_matches_the_loss_entropy_in_chunks():
    logits = torch.randn(7, 50, requires_grad=True)
    chunked = token_entropy_no_grad(logits, chunk_rows=3)
    assert not chunked.requires_grad
    assert torch.allclose(chunked, token_entropy(logits).detach(), atol=1e-6)
    probs = torch.softmax(logits.detach(), -1)
    assert torch.allclose(chunked, -(probs * probs.log()).sum(-1), atol=1e-5)
