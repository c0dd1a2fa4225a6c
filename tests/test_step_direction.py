"""One real `train_step` (DeepSpeed, tiny model) moves the policy the way the advantages say, for every
algorithm preset: the logprob of the rewarded completion rises, that of the unrewarded one falls.
A flipped sign anywhere in the policy loss fails this. Also: PPO epochs take the mini-batches in a
new order each epoch, inside the step itself."""

import numpy as np
import pytest
import torch

import learner.step as step_module
from learner.batch import TrainSample, collate_padded
from learner.collect import with_advantages
from learner.critic import build_critic_engine
from learner.engine import build_policy_engine
from learner.logprobs import completion_logprobs
from learner.plan import Layout
from learner.step import StepSettings, train_step
from learner.trainer import step_settings
from rl.config import ALGORITHM_PRESETS, load_config
from rl.coordinator import Trajectory
from rl.wire import SampleMeta
from tests.test_learner_engine import two_threads  # noqa: F401  (module-wide: 2 torch threads)

QUICKSTART = "configs/quickstart.yaml"
LR = 1e-3  # one Adam step then moves each 6-token answer by about 1.4-1.8 nats (measured), far past the margin
MARGIN = 0.5  # nats, on the sum over a completion's tokens


def trajectory(group: int, index: int, prompt: list[int], completion: list[int], reward: float) -> Trajectory:
    meta = SampleMeta(sample_id=f"w0-r0-t{group}-s{index}", task_id=f"t{group}", distribution="d", prompt_len=len(prompt),
                      completion_len=len(completion), reward=reward, reward_components={}, finish_reason="stop",
                      policy_version=0, worker_id=0, text="x")
    return Trajectory(meta, np.array(prompt, np.int32), np.array(completion, np.int32),
                      np.full(len(completion), -10.0, np.float32))


def scored_groups() -> list[Trajectory]:
    """Two prompts, each with a rewarded (1) and an unrewarded (0) answer of the same length (so PPO's
    whitened GAE advantages are positive on the one and negative on the other)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for group in range(2):
        prompt = torch.randint(100, 5000, (5 + group,), generator=g).tolist()
        for index, reward in enumerate((1.0, 0.0)):
            out.append(trajectory(group, index, prompt, torch.randint(100, 5000, (6,), generator=g).tolist(), reward))
    return out


def sequence_logprobs(engine, samples: list[TrainSample], temperature: float) -> list[float]:
    with torch.no_grad():
        return [completion_logprobs(engine.module, collate_padded([s], pad_id=0), temperature).sum().item() for s in samples]


def engines(model_dir: str, config):
    engine = build_policy_engine(model_dir, lr=LR, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0, total_steps=10,
                                 zero_stage=1, micro_batch_size=2, grad_accum_steps=2, grad_clip=config.train.grad_clip,
                                 dtype="float32", seed=0)
    critic = None
    if config.train.advantage == "gae":
        critic = build_critic_engine(model_dir, lr=config.critic.lr, warmup_steps=0, total_steps=10, zero_stage=1,
                                     micro_batch_size=2, grad_accum_steps=2, grad_clip=config.train.grad_clip, dtype="float32")
    return engine, critic


@pytest.mark.parametrize("algorithm", sorted(ALGORITHM_PRESETS))
def test_one_step_raises_the_rewarded_answer_and_lowers_the_other(tiny_model_dir, algorithm):
    config = load_config(QUICKSTART, [f"train.algorithm={algorithm}", f"train.lr={LR}"])
    settings = step_settings(config)
    trajectories = scored_groups()
    samples = with_advantages(trajectories, config)  # the preset's own advantage estimator
    rewarded = [t.meta.reward > 0 for t in trajectories]
    if config.train.advantage != "gae":
        assert all((s.advantage > 0) == r for s, r in zip(samples, rewarded))
    engine, critic = engines(str(tiny_model_dir), config)
    before = sequence_logprobs(engine, samples, settings.temperature)
    train_step(engine, samples, settings, Layout(packing=True), critic=critic, step=1)
    after = sequence_logprobs(engine, samples, settings.temperature)
    changes = [b - a for a, b in zip(before, after)]
    for change, good in zip(changes, rewarded):
        if good:
            assert change > MARGIN, f"{algorithm}: the rewarded answer's logprob moved {change:+.3f} ({changes})"
        else:
            assert change < -MARGIN, f"{algorithm}: the unrewarded answer's logprob moved {change:+.3f} ({changes})"


def test_ppo_epochs_take_the_mini_batches_in_a_new_order_inside_the_step(tiny_model_dir, monkeypatch):
    """train_step's own updates: each epoch covers the batch in another order; the same seed and step repeat it."""
    seen: list[list[int]] = []
    real_update = step_module.update

    def spy(engine, mini_batch, *args, **kwargs):
        seen.append(sorted(i for item in mini_batch.items if item.weight > 0 for i in item.mb.sample_index))
        return real_update(engine, mini_batch, *args, **kwargs)

    monkeypatch.setattr(step_module, "update", spy)
    config = load_config(QUICKSTART)
    samples = with_advantages([t for group in range(8) for t in groups_of(group)], config)  # 8 groups of 2
    settings = StepSettings(epochs=2, mini_batches=2, seed=0)
    engine, _ = engines(str(tiny_model_dir), config)
    orders = []
    for _ in range(2):
        seen.clear()
        metrics = train_step(engine, samples, settings, Layout(packing=True), step=3)
        assert metrics["train/updates"] == 4.0 and len(seen) == 4
        orders.append(list(seen))
    first_epoch, second_epoch = orders[0][:2], orders[0][2:]
    assert sorted(i for update in first_epoch for i in update) == list(range(16))
    assert sorted(i for update in second_epoch for i in update) == list(range(16))
    assert first_epoch != second_epoch  # step 3, seed 0: the epochs differ (a new plan each epoch)
    assert orders[0] == orders[1]  # the same seed and step: the same orders


def groups_of(group: int) -> list[Trajectory]:
    g = torch.Generator().manual_seed(group)
    prompt = torch.randint(100, 5000, (4,), generator=g).tolist()
    return [trajectory(group, i, prompt, torch.randint(100, 5000, (3,), generator=g).tolist(), float(i)) for i in range(2)]
