"""Named reward functions and their composition into a run's total reward.

A reward function takes `(completion: str, task: rl.wire.Task)` and returns a float. The run's
reward is the weighted sum of the configured components; every component is also reported.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rewards.boxed import boxed_answer, boxed_format
from rl.wire import Task

RewardFn = Callable[[str, Task], float]

REGISTRY: dict[str, RewardFn] = {
    "boxed_answer": boxed_answer,
    "boxed_format": boxed_format,
}


class RewardConfigError(ValueError):
    pass


def lookup(name: str) -> RewardFn:
    if ":" in name:
        return load_user_reward(name)
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, list(REGISTRY), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"built-in rewards: {', '.join(sorted(REGISTRY))}"
        raise RewardConfigError(f"reward {name!r} does not exist: {hint}")
    return REGISTRY[name]


def load_user_reward(spec: str) -> RewardFn:
    """`pkg.module:function` or `path/to/file.py:function` -> the function, checked for its signature."""
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise RewardConfigError(f"reward {spec!r}: file {path} does not exist")
        module_spec = importlib.util.spec_from_file_location(f"user_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as err:
            raise RewardConfigError(f"reward {spec!r}: importing {path} failed: {type(err).__name__}: {err}") from err
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise RewardConfigError(f"reward {spec!r}: cannot import module {target!r} ({err})") from err
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise RewardConfigError(f"reward {spec!r}: {target} has no function {attr!r}")
    try:
        inspect.signature(fn).bind("completion", None)
    except TypeError as err:
        raise RewardConfigError(
            f"reward {spec!r}: must accept (completion: str, task) and return a float; its signature is {inspect.signature(fn)}"
        ) from err
    return fn


@dataclass
class WeightedReward:
    components: list[tuple[str, float, RewardFn]]

    def __call__(self, completion: str, task: Task) -> tuple[float, dict[str, float]]:
        values = {name: float(fn(completion, task)) for name, _, fn in self.components}
        total = sum(weight * values[name] for name, weight, _ in self.components)
        return total, values


def build_reward(components: list[dict]) -> WeightedReward:
    """Resolve every component up front so a bad name fails before any model is loaded."""
    return WeightedReward([(c["name"], float(c.get("weight", 1.0)), lookup(c["name"])) for c in components])


# Components whose value says whether the answer is right; the first configured one defines accuracy.
CORRECTNESS_REWARDS = ("boxed_answer",)


def correctness_component(components) -> str | None:
    names = [c["name"] if isinstance(c, dict) else c.name for c in components]
    return next((n for n in names if n in CORRECTNESS_REWARDS), None)


def accuracy_of(metas, components) -> float | None:
    """Share of samples whose correctness component is positive; None if no such component is configured."""
    name = correctness_component(components)
    if name is None or not metas:
        return None
    return sum(m.reward_components.get(name, 0.0) > 0 for m in metas) / len(metas)
