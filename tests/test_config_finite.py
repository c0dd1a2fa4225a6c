"""nan and inf are refused in every number of the config, each error naming its key; the KL estimator
that does nothing inside the loss (k1) is refused there."""

import types
import typing

import pytest
from pydantic import BaseModel

from rl.config import ALGORITHM_PRESETS, Config, ConfigError, load_config

QUICKSTART = "configs/quickstart.yaml"


def float_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted keys of every float setting (float or float | None) in the nested sections of `model`."""
    keys = []
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += float_keys(annotation, key + ".")
        elif annotation is float or (typing.get_origin(annotation) in (typing.Union, types.UnionType)
                                     and float in typing.get_args(annotation)):  # float | None (not tuples)
            keys.append(key)
    return keys


KEYS = float_keys(Config)


def test_the_walk_finds_the_float_settings():
    assert len(KEYS) > 25 and {"train.lr", "rollout.temperature", "critic.lam", "transport.worker_wait_s"} <= set(KEYS)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "nan", "inf"])
@pytest.mark.parametrize("key", KEYS)
def test_every_float_setting_refuses_non_finite_values(key, value):
    with pytest.raises(ConfigError, match=rf"`{key}` must be a finite number") as caught:
        load_config(QUICKSTART, [f"{key}={value}"])
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("override, key", [
    ("train.betas=[.nan, 0.999]", "train.betas.0"),
    ("rewards.0.weight=.nan", "rewards.0.weight"),
    ("rewards.1.on_error=-.inf", "rewards.1.on_error"),
    ("env.sources.0.rewards=[{name: boxed_answer, tolerance: [1, .nan]}]", "env.sources.0.rewards.0.tolerance.1"),
    ("curriculum={static: {weights: {add_1d: .nan, add_2d: 1}}}", "curriculum.static.weights.add_1d"),
])
def test_non_finite_numbers_inside_lists_mappings_and_reward_parameters(override, key):
    with pytest.raises(ConfigError, match=rf"`{key}` must be a finite number"):
        load_config(QUICKSTART, [override])


def test_finite_numbers_still_load():
    config = load_config(QUICKSTART, ["rewards.0.weight=0.5", "train.betas=[0.8, 0.99]", "rollout.temperature=0.7"])
    assert (config.rewards[0].weight, config.train.betas, config.rollout.temperature) == (0.5, (0.8, 0.99), 0.7)


def test_k1_inside_the_loss_is_refused_naming_k2_and_k3():
    with pytest.raises(ConfigError, match="zero expected gradient.*k2.*reverse-KL.*k3") as caught:
        load_config(QUICKSTART, ["train.kl_in=loss", "train.kl_estimator=k1", "train.kl_coef=0.01"])
    assert "\n" not in str(caught.value)
    # without a KL term, or as PPO's reward penalty, k1 is fine
    assert load_config(QUICKSTART, ["train.kl_estimator=k1", "train.kl_coef=0"]).train.kl_estimator == "k1"
    assert load_config(QUICKSTART, ["train.algorithm=ppo", "train.kl_in=reward", "train.kl_estimator=k1",
                                    "train.kl_coef=0.01"]).train.kl_in == "reward"


@pytest.mark.parametrize("algorithm", sorted(ALGORITHM_PRESETS))
def test_no_preset_puts_k1_in_the_loss(algorithm):
    train = load_config(QUICKSTART, [f"train.algorithm={algorithm}", "train.kl_coef=0.01"]).train
    assert not (train.kl_in == "loss" and train.kl_estimator == "k1")
    assert ALGORITHM_PRESETS[algorithm].get("kl_estimator") != "k1"
