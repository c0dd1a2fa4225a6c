"""The curriculum's own signal: GRPO's normalised |advantage| whatever the training estimator, and the
correctness-only option; worked by hand, through the learner's collect step, the config and the checkpoint."""

import math
import random
from types import SimpleNamespace

import numpy as np
import pytest

from envs.source import SourceError, check_run_inputs
from learner.collect import SubmittedStep, collect_step, with_advantages
from learner.curriculum_signal import curriculum_signal, normalised_abs_advantages
from rl.config import ConfigError, load_config
from rl.coordinator import RolloutJob, Trajectory
from rl.curriculum import UCBCurriculum, make_curriculum
from rl.wire import SampleMeta

QUICKSTART = "configs/quickstart.yaml"
EPS = 1e-6  # train.adv_eps's default


def trajectory(distribution: str, group: str, index: int, correct: bool, formatted: bool) -> Trajectory:
    """A quickstart-style sample: reward = boxed_answer + 0.2 x boxed_format."""
    reward = float(correct) + 0.2 * float(formatted)
    meta = SampleMeta(sample_id=f"{group}-s{index}", task_id=f"{distribution}/train/{group}", distribution=distribution,
                      prompt_len=2, completion_len=2, reward=reward,
                      reward_components={"boxed_answer": float(correct), "boxed_format": float(formatted)},
                      correct=correct, finish_reason="stop", policy_version=0, worker_id=0, text="x")
    return Trajectory(meta, np.array([1, 2], np.int32), np.array([3, 4], np.int32), np.array([-1.0, -1.0], np.float32))


# add_1d, group g0: one right answer of four, all boxed: rewards 1.2, 0.2, 0.2, 0.2
#   mean 0.45, deviations +0.75, -0.25 x 3; sample std sqrt((0.5625 + 3 x 0.0625) / 3) = sqrt(0.25) = 0.5
#   |A| = 0.75 / (0.5 + 1e-6) = 1.4999970, 0.25 / 0.500001 = 0.4999990
# add_3d, group g1: all wrong, the format varies: rewards 0.2, 0, 0.2, 0 (correct all 0)
#   mean 0.1, deviations +-0.1; sample std sqrt(4 x 0.01 / 3) = 0.1154701; |A| = 0.1 / 0.1154711 = 0.8660179
ONE_RIGHT = [trajectory("add_1d", "w0-r0-t0", i, correct=i == 0, formatted=True) for i in range(4)]
ALL_WRONG = [trajectory("add_3d", "w0-r0-t1", i, correct=False, formatted=i % 2 == 0) for i in range(4)]
SAMPLES = ONE_RIGHT + ALL_WRONG
BY_HAND_REWARD = {"add_1d": [1.4999970, 0.4999990, 0.4999990, 0.4999990], "add_3d": [0.8660179] * 4}
BY_HAND_CORRECTNESS = {"add_1d": [1.4999970, 0.4999990, 0.4999990, 0.4999990], "add_3d": [0.0] * 4}


def assert_signal(actual: dict[str, list[float]], expected: dict[str, list[float]]) -> None:
    assert list(actual) == list(expected)
    for name in expected:
        assert actual[name] == pytest.approx(expected[name], rel=1e-6), name


def test_normalised_abs_advantages_by_hand():
    assert normalised_abs_advantages([1.0, 0.0, 0.0, 0.0], EPS) == pytest.approx([1.4999970, 0.4999990, 0.4999990, 0.4999990], rel=1e-6)
    # the scale and offset of the values do not matter (up to eps): 10x the rewards, +5
    assert normalised_abs_advantages([15.0, 5.0, 5.0, 5.0], EPS) == pytest.approx([1.5, 0.5, 0.5, 0.5], rel=1e-6)
    # two samples: +-0.5 / std 0.7071068 = 0.7071058 (with eps)
    assert normalised_abs_advantages([1.0, 0.0], EPS) == pytest.approx([0.7071058, 0.7071058], rel=1e-6)
    assert normalised_abs_advantages([0.3, 0.3, 0.3], EPS) == [0.0, 0.0, 0.0]  # all equal: exactly 0, no eps noise
    assert normalised_abs_advantages([0.7], EPS) == [0.0]  # a group of one has no baseline


@pytest.mark.parametrize("algorithm, training_abs_advantages", [
    # what the curriculum was fed before: the training estimator's own advantages, for group g0 then g1
    ("ppo", [0.0] * 8),  # GAE works per token; the sequence advantage at collection time is 0
    ("dr_grpo", [0.75, 0.25, 0.25, 0.25] + [0.1] * 4),  # r - mean, in reward units
    ("rloo", [1.0, 1 / 3, 1 / 3, 1 / 3] + [0.1333333] * 4),  # r - mean of the others = 4/3 (r - mean)
])
def test_the_signal_is_the_same_under_every_estimator(algorithm, training_abs_advantages):
    config = load_config(QUICKSTART, [f"train.algorithm={algorithm}", "curriculum=ucb"])
    trained = [abs(s.advantage) for s in with_advantages(SAMPLES, config)]
    assert trained == pytest.approx(training_abs_advantages, abs=1e-6)  # the estimator's own numbers differ ...
    signal = curriculum_signal(SAMPLES, config.curriculum_signal(), config.train.adv_eps)
    assert_signal(signal, BY_HAND_REWARD)  # ... the curriculum's do not


def test_under_grpo_the_signal_is_exactly_the_training_advantage():
    config = load_config(QUICKSTART, ["curriculum=ucb"])
    trained = [abs(s.advantage) for s in with_advantages(SAMPLES, config)]
    signal = curriculum_signal(SAMPLES, "reward", config.train.adv_eps)
    assert signal["add_1d"] + signal["add_3d"] == trained  # bit for bit: DUMP's default is unchanged
    assert_signal(signal, BY_HAND_REWARD)


def test_correctness_only_ignores_a_format_reward_that_varies_in_an_unsolved_group():
    reward = curriculum_signal(SAMPLES, "reward", EPS)
    correctness = curriculum_signal(SAMPLES, "correctness", EPS)
    assert_signal(correctness, BY_HAND_CORRECTNESS)
    assert correctness["add_3d"] == [0.0] * 4 and min(reward["add_3d"]) > 0.8
    # groups interleaved with other groups and distributions: values still follow each sample
    shuffled = SAMPLES[:]
    random.Random(0).shuffle(shuffled)
    mixed = curriculum_signal(shuffled, "correctness", EPS)
    assert sorted(mixed["add_1d"]) == pytest.approx(sorted(BY_HAND_CORRECTNESS["add_1d"]), rel=1e-6)
    unjudged = trajectory("add_1d", "w0-r0-t9", 0, correct=False, formatted=False)
    unjudged.meta.correct = None
    with pytest.raises(ValueError, match="needs a correctness component.*'add_1d'"):
        curriculum_signal([unjudged], "correctness", EPS)


def test_ucb_sends_fewer_prompts_to_an_unsolved_distribution_under_correctness_only():
    def probability_of_unsolved(signal: str) -> float:
        ucb = UCBCurriculum(["add_1d", "add_3d"], signal=signal)
        for _ in range(5):
            for name, values in curriculum_signal(SAMPLES, signal, EPS).items():
                ucb.observe(name, values)
        return ucb.weights()["add_3d"]

    # reward: mean |A| add_1d 0.75, add_3d 0.866 -> add_3d wins; correctness: add_3d 0 -> it loses
    #   equal counts, so equal bonuses: p(add_3d) = 1 / (1 + exp((0.75 - 0.866) / 0.1)) = 0.7614 and
    #   1 / (1 + exp(0.75 / 0.1)) = 0.000553
    assert probability_of_unsolved("reward") == pytest.approx(0.76137, abs=1e-4)
    assert probability_of_unsolved("correctness") == pytest.approx(1 / (1 + math.exp(7.5)), rel=1e-4)


class RecordingCurriculum:
    def __init__(self):
        self.observed: dict[str, list[float]] = {}

    def weights(self):
        return {"add_1d": 0.5, "add_3d": 0.5}

    def observe(self, distribution, values):
        self.observed.setdefault(distribution, []).extend(values)


@pytest.mark.parametrize("overrides, expected", [
    (["train.algorithm=ppo", "curriculum=ucb"], BY_HAND_REWARD),
    (["train.algorithm=rloo", "curriculum=ucb"], BY_HAND_REWARD),
    (["train.algorithm=grpo", "curriculum.ucb.signal=correctness"], BY_HAND_CORRECTNESS),
    (["train.algorithm=dr_grpo", "curriculum.ucb.signal=correctness"], BY_HAND_CORRECTNESS),
])
def test_collect_step_feeds_the_curriculum_its_own_signal(overrides, expected):
    config = load_config(QUICKSTART, overrides)
    coordinator = SimpleNamespace(collect=lambda job: list(SAMPLES))
    source = SimpleNamespace(curriculum=RecordingCurriculum())
    submitted = SubmittedStep(RolloutJob("train", 0), source.curriculum.weights(), 0.0)
    collect_step(coordinator, source, config, step=1, version=0, submitted=submitted)
    assert_signal(source.curriculum.observed, expected)


# ---------------------------------------------------------------- the setting


def test_the_signal_setting_parses_and_defaults_to_reward():
    assert load_config(QUICKSTART).curriculum_signal() == "reward"  # uniform: only counts
    assert load_config(QUICKSTART, ["curriculum=ucb"]).curriculum_signal() == "reward"  # DUMP
    config = load_config(QUICKSTART, ["curriculum={ucb: {signal: correctness, window: 50}}"])
    assert config.curriculum_signal() == "correctness"
    ucb = make_curriculum(config.curriculum_spec(), ["add_1d", "add_2d"])
    assert (ucb.signal, ucb.window) == ("correctness", 50)
    with pytest.raises(ConfigError, match="signal"):
        load_config(QUICKSTART, ["curriculum.ucb.signal=accuracy"])
    with pytest.raises(ValueError, match="ucb signal must be one of"):
        UCBCurriculum(["a"], signal="accuracy")


def test_a_checkpoint_resumes_only_with_its_own_signal():
    state = UCBCurriculum(["a", "b"], signal="correctness").state_dict()
    with pytest.raises(ValueError, match="signal: checkpoint 'correctness', config 'reward'"):
        UCBCurriculum(["a", "b"]).load_state_dict(state)
    UCBCurriculum(["a", "b"], signal="correctness").load_state_dict(state)
    older = UCBCurriculum(["a", "b"]).state_dict()
    del older["parameters"]["signal"]  # written before the setting existed: the reward signal
    UCBCurriculum(["a", "b"]).load_state_dict(older)
    with pytest.raises(ValueError, match="signal: checkpoint 'reward', config 'correctness'"):
        UCBCurriculum(["a", "b"], signal="correctness").load_state_dict(older)


def test_correctness_only_without_a_correctness_component_is_refused_before_start():
    config = load_config(QUICKSTART, ["curriculum.ucb.signal=correctness", "rewards=[{name: boxed_format}]"])
    with pytest.raises(SourceError, match=r"env.sources.0 \(arithmetic\): curriculum.ucb.signal=correctness needs"):
        check_run_inputs(config)
    check_run_inputs(load_config(QUICKSTART, ["curriculum.ucb.signal=correctness"]))  # boxed_answer judges
    check_run_inputs(load_config(QUICKSTART, ["curriculum.ucb.signal=correctness",
                                              "rewards=[{name: boxed_format, correctness: true}]"]))
    check_run_inputs(load_config(QUICKSTART, ["curriculum=ucb", "rewards=[{name: boxed_format}]"]))  # reward signal: fine
