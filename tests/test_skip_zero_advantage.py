"""Samples that cannot change the update stay out of the learner's passes, and the update stays the same.

A sample masked out of the loss, or (no KL, no entropy bonus, no critic) one whose advantage is exactly
0, adds exactly nothing to the gradient: leaving it out must give the same weights after each optimizer
step, including a step where every sample is left out (AdamW's moments still move the weights).
"""

import math
from dataclasses import replace

import pytest
import torch

from learner.batch import TrainSample
from learner.engine import build_policy_engine, iter_publish_tensors
from learner.plan import Layout, plan_step
from learner.step import StepSettings, computed_samples, train_step


def batch(advantages: list[list[float]], seed: int = 0) -> list[TrainSample]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for group in advantages:
        prompt = torch.randint(100, 5000, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        for a in group:
            c = int(torch.randint(2, 10, (1,), generator=g))
            out.append(TrainSample(prompt_ids=prompt, completion_ids=torch.randint(100, 5000, (c,), generator=g).tolist(),
                                   rollout_logprobs=[-8.0] * c, advantage=a, score=float(a > 0)))
    return out


# one group with spread (its second sample masked out of the loss), two whose rewards were all equal
MIXED = [[0.9, -0.9, 0.5, -0.5], [0.0] * 4, [0.0] * 4]


def mixed_batch() -> list[TrainSample]:
    samples = batch(MIXED)
    samples[1] = replace(samples[1], in_loss=False)
    return samples


def planned_indices(plans) -> list[int]:
    return sorted(i for plan in plans for mb in plan.micro_batches for i in mb.sample_index)


def test_the_plan_leaves_out_what_cannot_change_the_update_and_keeps_the_denominators():
    samples = mixed_batch()
    layout = Layout(packing=True, max_tokens_per_micro_batch=64)
    full = plan_step(samples, layout)
    skipping = plan_step(samples, layout, computed=computed_samples(StepSettings()))
    assert planned_indices(full) == list(range(12))
    assert planned_indices(skipping) == [0, 2, 3]
    assert [(p.num_tokens, p.num_sequences) for p in skipping] == [(p.num_tokens, p.num_sequences) for p in full]
    assert skipping[0].skipped == 9
    assert skipping[0].computed_tokens == sum(len(samples[i].completion_ids) for i in (0, 2, 3))
    # a KL term, an entropy bonus or a critic gives zero-advantage samples a gradient: only the masked one goes
    for settings in (StepSettings(kl_coef=0.1), StepSettings(entropy_coef=0.01), StepSettings(gae=True)):
        assert planned_indices(plan_step(samples, layout, computed=computed_samples(settings))) == [0] + list(range(2, 12))
    assert computed_samples(StepSettings(skip_zero_advantage=False)) is None


def test_a_mini_batch_with_nothing_to_compute_still_makes_its_pass_weighted_zero():
    samples = batch([[0.0] * 4, [0.0] * 3])
    (plan,) = plan_step(samples, Layout(packing=True), computed=computed_samples(StepSettings()))
    assert plan.weights == [0.0] and len(plan.micro_batches[0].sample_index) == 1
    shortest = min(range(7), key=lambda i: len(samples[i].prompt_ids) + len(samples[i].completion_ids))
    assert plan.micro_batches[0].sample_index == [shortest]
    assert (plan.skipped, plan.computed_tokens) == (7, 0)


@pytest.fixture(autouse=True)
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def engine_for(model_dir):
    return build_policy_engine(str(model_dir), lr=1e-3, weight_decay=0.01, betas=(0.9, 0.999), warmup_steps=0,
                               total_steps=10, zero_stage=1, micro_batch_size=2, grad_accum_steps=2, grad_clip=1.0,
                               dtype="float32", seed=0)


def weights(engine) -> dict[str, torch.Tensor]:
    return {n: t.clone() for bucket in iter_publish_tensors(engine, torch.float32, 2**22) for n, t in bucket}


def max_relative_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((torch.linalg.vector_norm(a[n] - b[n]) / torch.linalg.vector_norm(b[n])).item() for n in b)


@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean_token_mean"])
def test_skipping_gives_the_same_weights_step_after_step(tiny_model_dir, loss_agg):
    layout = Layout(packing=True, max_tokens_per_micro_batch=48)
    steps = [mixed_batch(), batch([[0.0] * 4, [0.0] * 4], seed=1)]  # the second: every sample left out
    results = {}
    for skip in (True, False):
        engine, settings = engine_for(tiny_model_dir), StepSettings(loss_agg=loss_agg, skip_zero_advantage=skip)
        before, history = weights(engine), []
        for step, samples in enumerate(steps, 1):
            metrics = train_step(engine, samples, settings, layout, step=step)
            history.append((metrics, weights(engine)))
        results[skip] = (before, history)
    before, skipped = results[True]
    _, full = results[False]
    for (m_skip, w_skip), (m_full, w_full) in zip(skipped, full):
        assert max_relative_gap(w_skip, w_full) < 1e-5
        assert m_skip["loss/pg"] == pytest.approx(m_full["loss/pg"], rel=1e-5, abs=1e-9)
    assert max_relative_gap(skipped[0][1], before) > 1e-4  # the first step trained
    assert max_relative_gap(skipped[1][1], skipped[0][1]) > 1e-5  # and the all-zero one still moved the weights
    assert [m["train/skipped_frac"] for m, _ in skipped] == [0.75, 1.0]
    assert [m["train/skipped_frac"] for m, _ in full] == [0.0, 0.0]
    # the entropy diagnostic is a mean over the computed tokens: none computed, none reported
    assert math.isfinite(skipped[0][0]["train/entropy"]) and math.isnan(skipped[1][0]["train/entropy"])
    assert all(math.isfinite(m["train/entropy"]) for m, _ in full)
