"""Named reward functions and their composition into a run's total reward.

A reward function takes the completion text and the task and returns a float:

    def my_reward(completion: str, task: rl.wire.Task, *, my_param: float = 1.0) -> float

Keyword parameters come from the config entry (`{name: my_reward, weight: 0.5, my_param: 2}`).
A function may also accept `num_tokens` (completion length in tokens), `finish_reason`
("stop" or "length"), `token_ids` (the completion's token ids, a list of ints) and
`max_new_tokens` (the token budget of the request that sampled it); they are passed when its
signature names them. The batch form
(`@reward(batch=True)`) takes lists — `(completions: list[str], tasks: list[Task], ...)` — and
returns one float per completion; it is called once per group of samples of the same prompt.

A config names a reward by its registered name (built-ins, or `@reward`-decorated functions in an
imported module), by import path (`my_pkg.my_module:my_reward`) or by file (`path/to/file.py:
my_reward`). Every name, parameter and signature is checked at start-up, before any model loads.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rl.wire import Task

RewardFn = Callable[..., Any]
CONTEXT_KEYS = ("num_tokens", "finish_reason", "token_ids", "max_new_tokens")
RESERVED_KEYS = ("name", "weight", "on_error", "alias", "correctness")

# Built-in rewards, imported on first use so that a config check stays cheap.
BUILTINS: dict[str, str] = {
    "boxed_answer": "rewards.boxed:boxed_answer",
    "boxed_format": "rewards.boxed:boxed_format",
    "math_answer": "rewards.math_answer:math_answer",
    "format": "rewards.format:think_answer_format",
    "overlong": "rewards.length:overlong_penalty",
    "cosine_length": "rewards.length:cosine_length",
    "length_penalty": "rewards.length:length_penalty",
    "knights_knaves": "rewards.knights_knaves:knights_knaves",
    "countdown": "rewards.countdown:countdown",
    # label-free (Xin et al. 2025); `format` is taken by the <think>/<answer> pattern reward
    "surrogate_length": "rewards.surrogate:surrogate_length",
    "surrogate_format": "rewards.surrogate:surrogate_format",
    "format_length": "rewards.surrogate:format_length",
}
REGISTRY: dict[str, RewardFn] = {}

# Components whose value says whether the answer is right (positive = right); unless a component
# says `correctness: true`, the first of these in a reward set defines accuracy.
CORRECTNESS_REWARDS = ("boxed_answer", "math_answer", "knights_knaves", "countdown")


class RewardConfigError(ValueError):
    """A reward entry that cannot be used; the message names it and says what to do."""


def reward(name: str | None = None, *, batch: bool = False) -> Callable[[RewardFn], RewardFn]:
    """Register a function as a named reward: `@reward("brevity")` or `@reward(batch=True)`."""

    def register(fn: RewardFn) -> RewardFn:
        fn.reward_batch = batch
        REGISTRY[name or fn.__name__] = fn
        return fn

    return register


def lookup(name: str) -> RewardFn:
    if name in REGISTRY:
        return REGISTRY[name]
    if name in BUILTINS:
        return import_target(BUILTINS[name], name)
    if ":" in name:
        return import_target(name, name)
    known = sorted(set(BUILTINS) | set(REGISTRY))
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"built-in rewards: {', '.join(known)}"
    raise RewardConfigError(f"reward {name!r} does not exist: {hint} (or name your own as module:function or file.py:function)")


def import_target(spec: str, shown: str) -> RewardFn:
    """`pkg.module:function` or `path/to/file.py:function` -> the function."""
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py"):
        module = load_file(target, f"reward {shown!r}")
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise RewardConfigError(f"reward {shown!r}: cannot import module {target!r} ({err})") from err
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise RewardConfigError(f"reward {shown!r}: {target} has no function {attr!r}")
    return fn


def load_file(file: str, label: str):
    """Import a user's .py file as a module; an error in it is reported with `label`."""
    path = Path(file).expanduser()
    if not path.is_file():
        raise RewardConfigError(f"{label}: file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"user_rewards_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # any error in user code becomes a config error that names the file
        raise RewardConfigError(f"{label}: importing {path} failed: {type(err).__name__}: {err}") from err
    return module


@dataclass
class Component:
    name: str  # the metric key: reward/<name>
    weight: float
    on_error: float
    fn: RewardFn
    params: dict[str, Any] = field(default_factory=dict)
    batch: bool = False
    context_keys: tuple[str, ...] = ()
    defines_accuracy: bool = False  # a positive value means a correct answer

    def score(self, completions: list[str], tasks: list, contexts: list[dict[str, Any]]) -> list[float | dict[str, float]]:
        tasks = [t if isinstance(t, Task) else Task.model_validate(t) for t in tasks]
        if self.batch:
            extra = {k: [c.get(k) for c in contexts] for k in self.context_keys}
            values = list(self.fn(completions, tasks, **self.params, **extra))
        else:
            values = [
                self.fn(c, t, **self.params, **{k: ctx.get(k) for k in self.context_keys})
                for c, t, ctx in zip(completions, tasks, contexts)
            ]
        return [as_value(v, self.name) for v in values]


def as_value(value: Any, name: str) -> float | dict[str, float]:
    """A reward's return value: a float, or a dict of named floats (summed into the component).

    NaN or infinity is an error (scored `on_error`): it would poison every advantage of its group.
    """
    if isinstance(value, dict):
        return {str(k): finite(float(v), f"{name}.{k}") for k, v in value.items()}
    if isinstance(value, (int, float)) and not isinstance(value, bool) or hasattr(value, "__float__"):
        return finite(float(value), name)
    raise TypeError(f"reward {name!r} returned {type(value).__name__}; return a float or a dict of named floats")


def finite(value: float, name: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"reward {name!r} returned {value}; rewards must be finite numbers")
    return value


def expand(name: str, value: float | dict[str, float]) -> dict[str, float]:
    """{name: value} for a float; for a dict, its entries as name.key plus their sum as name."""
    if isinstance(value, dict):
        return {name: sum(value.values()), **{f"{name}.{k}": v for k, v in value.items()}}
    return {name: value}


def import_modules(modules: list[str]) -> None:
    """Import modules or .py files whose `@reward` decorators register names the config uses."""
    for module in modules:
        if module.endswith(".py"):
            load_file(module, f"reward module {module!r}")
        else:
            try:
                importlib.import_module(module)
            except ImportError as err:
                raise RewardConfigError(f"reward module {module!r} cannot be imported ({err})") from err


def combine(components: list[Component], values: dict[str, float | dict[str, float]]) -> tuple[float, dict[str, float]]:
    """The weighted total and every logged value (dict returns expanded) of one sample."""
    logged: dict[str, float] = {}
    for c in components:
        logged.update(expand(c.name, values[c.name]))
    return sum(c.weight * logged[c.name] for c in components), logged


def resolve_components(specs: list[dict[str, Any]], modules: list[str] = ()) -> list[Component]:
    """Resolve and check every configured component; raises RewardConfigError on the first problem."""
    import_modules(list(modules))
    components, flags, builtin_correctness = [], [], []
    for spec in specs:
        spec = dict(spec)
        name = spec.pop("name")
        weight = float(spec.pop("weight", 1.0))
        on_error = float(spec.pop("on_error", 0.0))
        alias = spec.pop("alias", None)
        flags.append(spec.pop("correctness", None))
        builtin_correctness.append(name in CORRECTNESS_REWARDS)
        fn = lookup(name)
        batch = bool(getattr(fn, "reward_batch", False))
        context_keys = check_signature(name, fn, spec, batch)
        shown = alias or (name.rpartition(":")[2] if ":" in name else name)
        components.append(Component(shown, weight, on_error, fn, spec, batch, context_keys))
    names = [c.name for c in components]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise RewardConfigError(f"rewards {sorted(duplicates)} are listed twice; give one of them `alias: other_name`")
    if sum(flag is True for flag in flags) > 1:
        raise RewardConfigError("only one reward component can say `correctness: true` (it defines accuracy)")
    chosen = next((i for i, flag in enumerate(flags) if flag is True), None)
    if chosen is None:
        chosen = next((i for i, (flag, b) in enumerate(zip(flags, builtin_correctness)) if b and flag is not False), None)
    if chosen is not None:
        components[chosen].defines_accuracy = True
    return components


def check_signature(name: str, fn: RewardFn, params: dict[str, Any], batch: bool) -> tuple[str, ...]:
    signature = inspect.signature(fn)
    accepted = signature.parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    for key in params:
        if key not in accepted and not takes_kwargs:
            options = [k for k, p in accepted.items() if p.kind is inspect.Parameter.KEYWORD_ONLY or p.default is not p.empty]
            options = [k for k in options if k not in CONTEXT_KEYS]
            close = difflib.get_close_matches(key, options + list(RESERVED_KEYS[1:]), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"its parameters: {', '.join(options) or 'none'}"
            raise RewardConfigError(f"reward {name!r} has no parameter {key!r}: {hint}")
    context_keys = tuple(k for k in CONTEXT_KEYS if k in accepted or takes_kwargs)
    probe = ([""], [None]) if batch else ("", None)
    try:
        signature.bind(*probe, **params, **{k: None for k in context_keys})
    except TypeError as err:
        form = "(completions: list[str], tasks: list[Task], ...)" if batch else "(completion: str, task: Task, ...)"
        raise RewardConfigError(
            f"reward {name!r} must be callable as {form} with its config parameters; its signature is {signature} ({err})"
        ) from err
    return context_keys


@dataclass
class WeightedReward:
    """Inline scoring (no pool): for tests, benchmarks and trusted built-ins."""

    components: list[Component]

    def __call__(self, completion: str, task: Task, **context) -> tuple[float, dict[str, float]]:
        return combine(self.components, {c.name: c.score([completion], [task], [context])[0] for c in self.components})


def build_reward(specs: list[dict[str, Any]], modules: list[str] = ()) -> WeightedReward:
    return WeightedReward(resolve_components(specs, modules))


def is_correct(components: list[Component], logged: dict[str, float]) -> bool | None:
    """Whether a sample's answer is right by its set's accuracy component; None if the set has none."""
    judge = next((c for c in components if c.defines_accuracy), None)
    return None if judge is None else logged[judge.name] > 0


def accuracy_of(metas) -> float | None:
    """Share of correct samples among those whose reward set can tell; None if none can."""
    judged = [m.correct for m in metas if m.correct is not None]
    return sum(judged) / len(judged) if judged else None
