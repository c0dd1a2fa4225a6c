"""The algorithm switches of a step: presets, advantage estimators on trajectories, DAPO's filters, and
real DeepSpeed steps (tiny model) for PPO with a critic, several updates per batch and the entropy bonus."""

import math

import numpy as np
import pytest
import torch

from learner.batch import TrainSample
from learner.collect import first_groups, keep_informative_groups, with_advantages
from learner.critic import build_critic_engine
from learner.engine import (
    build_policy_engine,
    build_reference_model,
    iter_publish_tensors,
)
from learner.plan import Layout, plan_step
from learner.step import StepSettings, train_step
from learner.trainer import step_settings
from rl.config import ConfigError, load_config
from rl.coordinator import Trajectory
from rl.wire import SampleMeta

QUICKSTART = "configs/quickstart.yaml"


def trajectory(group: str, index: int, reward: float, finish_reason: str = "stop") -> Trajectory:
    meta = SampleMeta(sample_id=f"{group}-s{index}", task_id=group, distribution="d", prompt_len=2, completion_len=2,
                      reward=reward, reward_components={}, finish_reason=finish_reason, policy_version=0, worker_id=0, text="x")
    return Trajectory(meta, np.array([1, 2], np.int32), np.array([3, 4], np.int32), np.array([-1.0, -1.0], np.float32))


# group g0: rewards 1, 0, 0, 1 (mean 0.5); group g1: all 2 (no signal)
TRAJECTORIES = [trajectory("w0-r0-t0", i, r) for i, r in enumerate([1.0, 0.0, 0.0, 1.0])] + [
    trajectory("w0-r0-t1", i, 2.0, "length" if i == 0 else "stop") for i in range(4)
]


# ------------------------------------------------------------------ config presets


def test_algorithm_presets_fill_only_what_the_user_left_unset():
    dapo = load_config(QUICKSTART, ["train.algorithm=dapo"]).train
    assert (dapo.clip_eps_low, dapo.clip_eps_high, dapo.loss_agg) == (0.2, 0.28, "token_mean")
    assert dapo.dynamic_sampling and dapo.overlong_filter and dapo.advantage == "grpo"
    mine = load_config(QUICKSTART, ["train.algorithm=dapo", "train.clip_eps_high=0.3", "train.overlong_filter=false"]).train
    assert mine.clip_eps_high == 0.3 and mine.overlong_filter is False and mine.dynamic_sampling
    dr = load_config(QUICKSTART, ["train.algorithm=dr_grpo"])
    assert (dr.train.advantage, dr.train.loss_agg) == ("dr_grpo", "seq_mean_token_sum_norm")
    assert step_settings(dr).length_norm == dr.rollout.max_new_tokens  # Dr. GRPO's constant defaults to the longest answer
    assert load_config(QUICKSTART, ["train.algorithm=ppo"]).train.advantage == "gae"
    grpo = load_config(QUICKSTART).train
    assert (grpo.advantage, grpo.loss_agg, grpo.dynamic_sampling) == ("grpo", "token_mean", False)
    settings = step_settings(load_config(QUICKSTART, ["train.algorithm=dapo", "rollout.async=true"]))
    assert (settings.clip_low, settings.clip_high, settings.tis_cap) == (0.2, 0.28, 2.0)
    assert step_settings(load_config(QUICKSTART)).tis_cap is None  # on-policy: no importance weights


@pytest.mark.parametrize("override, message", [
    (["train.algorithm=ppo2"], "train.algorithm"),
    (["train.kl_in=reward", "train.kl_coef=0.1"], "train.kl_in=reward shapes per-token rewards for GAE"),
    (["rollout.async=true", "rollout.max_staleness=0"], "rollout.max_staleness >= 1"),
    (["train.mini_batches=3"], "train.mini_batches=3 must divide the batch"),
    (["train.packing=false", "train.mini_batches=3"], "train.mini_batches x train.micro_batch_size"),
    (["train.loss_agg=sequence_mean"], "train.loss_agg"),
])
def test_inconsistent_algorithm_settings_are_refused_with_the_fix(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(QUICKSTART, override)


# ------------------------------------------------------------------ advantages on trajectories


def test_each_estimator_on_a_group_worked_by_hand():
    def advantages(algorithm):
        return [s.advantage for s in with_advantages(TRAJECTORIES, load_config(QUICKSTART, [f"train.algorithm={algorithm}"]))]

    # GRPO: +-0.5 / Bessel std 0.57735 = +-0.866; the all-equal group gets exact zeros
    assert advantages("grpo")[:4] == pytest.approx([0.866025, -0.866025, -0.866025, 0.866025], abs=1e-5)
    assert advantages("grpo")[4:] == [0.0] * 4
    # Dr. GRPO: r - mean = +-0.5
    assert advantages("dr_grpo") == pytest.approx([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
    # RLOO: 1 - mean(0, 0, 1) = 2/3 and 0 - mean(1, 0, 1) = -2/3
    assert advantages("rloo") == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0])
    # PPO: no sequence advantage (GAE works per token in the step); the reward is the last token's score
    ppo = with_advantages(TRAJECTORIES, load_config(QUICKSTART, ["train.algorithm=ppo"]))
    assert [s.advantage for s in ppo] == [0.0] * 8 and [s.score for s in ppo] == [1, 0, 0, 1, 2, 2, 2, 2]


def test_overlong_filtering_masks_truncated_samples_out_of_the_loss():
    config = load_config(QUICKSTART, ["train.algorithm=dapo"])
    samples = with_advantages(TRAJECTORIES, config)
    assert [s.in_loss for s in samples] == [True] * 4 + [False, True, True, True]
    for layout in (Layout(packing=True), Layout(packing=False, micro_batch_size=8)):
        (plan,) = plan_step(samples, layout)
        (mb,) = plan.micro_batches
        rows = {index: row for row, index in enumerate(mb.sample_index)}
        assert mb.loss_mask[rows[4]].sum() == 0 and mb.loss_mask[rows[5]].sum() == 2
        assert plan.num_tokens == 14 and plan.num_sequences == 7  # the denominators leave the filtered sample out
    assert all(s.in_loss for s in with_advantages(TRAJECTORIES, load_config(QUICKSTART)))  # off by default


def test_dynamic_sampling_keeps_only_groups_with_unequal_rewards_and_trims_to_the_batch():
    samples = with_advantages(TRAJECTORIES, load_config(QUICKSTART))
    kept, kept_samples = keep_informative_groups(TRAJECTORIES, samples)
    assert [t.meta.sample_id for t in kept] == [f"w0-r0-t0-s{i}" for i in range(4)]
    assert [s.advantage for s in kept_samples] == [s.advantage for s in samples[:4]]
    more = [trajectory("w0-r1-t0", i, float(i)) for i in range(2)]
    trajectories, trimmed = first_groups(kept + more, kept_samples + kept_samples[:2], 1)
    assert [t.meta.sample_id for t in trajectories] == [f"w0-r0-t0-s{i}" for i in range(4)] and len(trimmed) == 4


# ------------------------------------------------------------------ steps on a real engine


@pytest.fixture(scope="module", autouse=True)
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def samples(count=4, seed=0, advantage=None, score=None, rollout_logprob=-8.0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        p, c = 3 + i % 3, 2 + (2 * i) % 5
        out.append(TrainSample(prompt_ids=torch.randint(100, 5000, (p,), generator=g).tolist(),
                               completion_ids=torch.randint(100, 5000, (c,), generator=g).tolist(),
                               rollout_logprobs=[rollout_logprob] * c, advantage=advantage if advantage is not None else (-1) ** i * 0.7,
                               score=score if score is not None else float(i % 2)))
    return out


def engine_for(model_dir, lr=1e-3, grad_accum=2):
    return build_policy_engine(str(model_dir), lr=lr, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0, total_steps=10,
                               zero_stage=1, micro_batch_size=2, grad_accum_steps=grad_accum, grad_clip=0.0, dtype="float32", seed=0)


def weights(engine):
    return {n: t.clone() for bucket in iter_publish_tensors(engine, torch.float32, 2**22) for n, t in bucket}


def test_ppo_step_trains_policy_and_critic_and_the_critic_learns_the_returns(tiny_model_dir):
    engine = engine_for(tiny_model_dir)
    critic = build_critic_engine(str(tiny_model_dir), lr=1e-2, warmup_steps=0, total_steps=10, zero_stage=1,
                                 micro_batch_size=2, grad_accum_steps=2, grad_clip=0.0, dtype="float32")
    assert all((p == 0).all() for p in critic.module.value_head.parameters())  # V starts at 0
    settings = StepSettings(gae=True, gamma=1.0, lam=1.0, value_clip=0.2, whiten_advantages=True)
    batch = samples(score=1.0)
    before = weights(engine)
    losses = [train_step(engine, batch, settings, critic=critic)["loss/value"] for _ in range(8)]
    after = weights(engine)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    # every return is 1 (gamma = lambda = 1, reward 1 at the end): the value loss 0.5 (V - 1)^2 starts at 0.5 and must fall
    assert losses[0] == pytest.approx(0.5, abs=1e-6)
    assert losses[-1] < 0.5 * losses[0]
    metrics = train_step(engine, batch, settings, critic=critic)
    assert 0 < metrics["critic/value_mean"] <= 1.5 and metrics["critic/return_mean"] == pytest.approx(1.0)
    # every return is 1: explained variance is undefined, so it is absent; the whitened advantages span both signs
    assert "critic/explained_variance" not in metrics
    assert metrics["advantage/min"] < 0 < metrics["advantage/max"] and metrics["advantage/mean"] == pytest.approx(0.0, abs=1e-4)
    varied = train_step(engine, samples(score=None), settings, critic=critic)  # returns 0 and 1: the critic explains some
    assert -10 < varied["critic/explained_variance"] <= 1.0


def test_several_updates_per_batch_make_the_ratio_and_clipping_bite(tiny_model_dir):
    engine = engine_for(tiny_model_dir, lr=5e-2, grad_accum=1)
    batch = samples()
    one = train_step(engine, batch, StepSettings())
    assert one["train/clip_frac"] == 0.0 and one["train/updates"] == 1.0  # ratio 1 with one update
    assert "train/approx_kl" not in one  # old = new policy by construction: nothing to measure
    many = train_step(engine, batch, StepSettings(epochs=2, mini_batches=2, clip_low=0.01, clip_high=0.01))
    assert many["train/updates"] == 4.0 and many["train/clip_frac"] > 0  # later updates see a moved policy
    assert many["train/approx_kl"] > 0  # ... and so moved away from the old one
    for metrics in (one, many):  # the phases of the step, this rank's wall time
        assert all(metrics[f"time/{phase}_seconds"] > 0 for phase in ("no_grad", "forward_backward", "optimizer"))


def test_entropy_bonus_and_kl_estimators_in_a_step(tiny_model_dir):
    engine = engine_for(tiny_model_dir)
    ref = build_reference_model(str(tiny_model_dir), "float32")
    batch = samples()
    metrics = train_step(engine, batch, StepSettings(entropy_coef=0.01, kl_coef=0.1, kl_estimator="k2"), ref_model=ref)
    # a random tiny model is close to uniform over its vocabulary: entropy near log V
    vocab = engine.module.config.vocab_size
    assert 0.8 * math.log(vocab) < metrics["train/entropy"] <= math.log(vocab) + 1e-4
    assert metrics["loss/entropy"] == pytest.approx(0.01 * metrics["train/entropy"], rel=1e-5)
    assert metrics["train/kl"] == pytest.approx(0.0, abs=1e-6)  # same weights as the reference before the update
    assert metrics["loss/total"] == pytest.approx(metrics["loss/pg"] + metrics["loss/kl"] - metrics["loss/entropy"], abs=1e-6)


def test_entropy_is_logged_without_the_bonus_and_equals_the_bonus_entropy(tiny_model_dir):
    batch = samples()
    plain = train_step(engine_for(tiny_model_dir), batch, StepSettings())  # same initial weights, same batch
    bonus = train_step(engine_for(tiny_model_dir), batch, StepSettings(entropy_coef=0.01))
    assert plain["train/entropy"] == pytest.approx(bonus["train/entropy"], rel=1e-6)
    assert plain["loss/entropy"] == 0.0 and plain["loss/total"] == pytest.approx(plain["loss/pg"], abs=1e-7)


def test_truncated_importance_weights_follow_the_sampler_gap(tiny_model_dir):
    engine = engine_for(tiny_model_dir)
    vocab = engine.module.config.vocab_size  # a random model's logprobs are about -log V
    low = samples(rollout_logprob=-math.log(vocab) - 5)
    assert train_step(engine, low, StepSettings(tis_cap=2.0))["train/is_weight"] == pytest.approx(2.0)  # e^5 > 2: capped
    high = samples(rollout_logprob=-math.log(vocab) + 3)
    weight = train_step(engine, high, StepSettings(tis_cap=2.0))["train/is_weight"]
    assert 0.5 * math.exp(-3) < weight < 2 * math.exp(-3)  # the sampler liked these tokens more: down-weighted


def test_a_checkpoint_restores_the_critic_exactly(tiny_model_dir, tmp_path):
    from learner.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    def critic_engine():
        return build_critic_engine(str(tiny_model_dir), lr=1e-2, warmup_steps=0, total_steps=10, zero_stage=1,
                                   micro_batch_size=2, grad_accum_steps=2, grad_clip=0.0, dtype="float32")

    engine, critic = engine_for(tiny_model_dir), critic_engine()
    batch = samples(score=1.0)
    train_step(engine, batch, StepSettings(gae=True), critic=critic)
    path = save_checkpoint(engine, tmp_path, 1, {"policy_version": 1}, str(tiny_model_dir), keep_last=1, critic=critic)
    trained = {n: p.detach().clone() for n, p in critic.module.named_parameters()}

    fresh_engine, fresh_critic = engine_for(tiny_model_dir), critic_engine()
    assert not torch.equal(fresh_critic.module.value_head.weight, trained["value_head.weight"])
    assert load_checkpoint(fresh_engine, path, fresh_critic)["policy_version"] == 1
    for name, param in fresh_critic.module.named_parameters():
        assert torch.equal(param, trained[name]), name
    # the next step continues identically (optimizer state restored too)
    a = train_step(engine, batch, StepSettings(gae=True), critic=critic)["loss/value"]
    b = train_step(fresh_engine, batch, StepSettings(gae=True), critic=fresh_critic)["loss/value"]
    assert a == pytest.approx(b, rel=1e-6)
    import shutil

    shutil.rmtree(path / "critic")
    with pytest.raises(CheckpointError, match="no critic"):
        load_checkpoint(engine_for(tiny_model_dir), path, critic_engine())
