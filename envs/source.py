"""The task source: every configured source's splits, which training task comes next, the held-out sets.

A run's `env.sources` lists generators (arithmetic, knights_knaves, countdown) and files. Each
distribution of each source is one arm of the curriculum. Each source also names the prompt style
and the reward set its tasks use: its own setting, else the run-wide one (`env.system_prompt`,
`env.instruction`, top-level `rewards`), else the generator's default (a K&K puzzle is scored by
`knights_knaves` + `format`, a countdown task by `countdown` + `format`, and so on).
Held-out tasks are scored by the same set unless `eval.rewards` is set or the run is label-free
(`env.label_free`: training tasks lose their answers, held-out ones keep them and are scored by
the source's default, correctness-judging set); such a second set is named NAME:eval.

Inside a distribution, tasks are drawn without replacement and reshuffled when exhausted, so an
epoch covers the data. Which distribution comes next is the curriculum's decision.
"""

from __future__ import annotations

import importlib
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from envs.prompts import PromptStyle
from rl.config import Config, EnvConfig, RewardComponent
from rl.curriculum import Curriculum, UniformCurriculum, make_curriculum
from rl.label_free import solved_in_its_own_prompt, without_answer
from rl.wire import Task

log = logging.getLogger("envs")

GENERATORS = {"arithmetic": "envs.arithmetic", "knights_knaves": "envs.knights_knaves", "countdown": "envs.countdown"}
FILE_MODULE = "envs.files"
TASKS_FILE = "tasks.json"  # in the run folder: the tasks `rl train` built, read by the learner


class SourceError(ValueError):
    """A source that cannot produce tasks; the message names it and says what to do."""


@dataclass
class ResolvedSource:
    """One `env.sources` entry with every default filled in."""

    index: int
    config: Any  # one of the source models in rl.config
    module: ModuleType
    style: PromptStyle
    reward_set: str
    rewards: list[dict[str, Any]]
    eval_reward_set: str  # the set held-out tasks are scored with; the training set's name when they are the same
    eval_rewards: list[dict[str, Any]]
    label_free: bool  # training tasks lose their answer (rl/label_free.py)

    @property
    def label(self) -> str:
        return f"env.sources.{self.index} ({self.config.type})"


def resolve_sources(
    env: EnvConfig, rewards: list[RewardComponent] | None, eval_rewards: list[RewardComponent] | None = None,
) -> list[ResolvedSource]:
    resolved = []
    for index, source in enumerate(env.sources):
        module = importlib.import_module(FILE_MODULE if source.type == "file" else GENERATORS[source.type])
        system_prompt = first_set(source.system_prompt, env.system_prompt, getattr(module, "DEFAULT_SYSTEM_PROMPT", None))
        instruction = first_set(source.instruction, env.instruction, getattr(module, "DEFAULT_INSTRUCTION", ""))
        components = source.rewards if source.rewards is not None else rewards
        specs = [c.model_dump(exclude_none=True) for c in components] if components is not None else list(module.DEFAULT_REWARDS)
        eval_specs = evaluation_specs(specs, eval_rewards, module, env.label_free)
        name = f"{index}:{source.type}"
        resolved.append(ResolvedSource(
            index, source, module, PromptStyle(system_prompt or None, instruction), name, specs,
            name if eval_specs == specs else f"{name}:eval", eval_specs, env.label_free,
        ))
    return resolved


def evaluation_specs(training: list[dict[str, Any]], eval_rewards: list[RewardComponent] | None, module: ModuleType,
                     label_free: bool) -> list[dict[str, Any]]:
    """What held-out tasks are scored with: eval.rewards, else the training rewards, which under
    env.label_free judge no correctness, so then the source's default rewards (they do)."""
    if eval_rewards is not None:
        return [c.model_dump(exclude_none=True) for c in eval_rewards]
    return list(module.DEFAULT_REWARDS) if label_free else training


def first_set(*values):
    return next((v for v in values if v is not None), None)


def reward_sets(config: Config) -> dict[str, list[dict[str, Any]]]:
    """Reward-set name -> component specs, one set per source (two where held-out tasks are scored
    differently: NAME and NAME:eval); tasks carry their set's name."""
    sets = {}
    for s in resolve_sources(config.env, config.rewards, config.eval.rewards):
        sets[s.reward_set] = s.rewards
        sets[s.eval_reward_set] = s.eval_rewards
    return sets


def check_sources(config: Config) -> None:
    """Cheap start-up checks before any process starts: distribution names parse, files exist and read."""
    for source in resolve_sources(config.env, config.rewards, config.eval.rewards):
        try:
            if source.config.type == "file":
                source.module.check_source(source.config)
            else:
                for name in source.config.distributions:
                    source.module.parse_distribution(name)
        except ValueError as err:
            raise SourceError(f"{source.label}: {err}") from err


def check_run_inputs(config: Config) -> None:
    """Everything `rl train` and `rl eval` check before any process or model starts: the sources,
    and every reward set (names, parameters, signatures)."""
    from rewards.registry import build_reward

    check_sources(config)
    for source in resolve_sources(config.env, config.rewards, config.eval.rewards):
        build_reward(source.eval_rewards, config.reward_modules)
        reward = build_reward(source.rewards, config.reward_modules)
        if config.curriculum_signal() == "correctness" and not any(c.defines_accuracy for c in reward.components):
            fix = ("label-free training judges no correctness, so use signal: reward" if source.label_free
                   else "mark one with `correctness: true`, or use signal: reward")
            raise SourceError(f"{source.label}: curriculum.ucb.signal=correctness needs a correctness component in its "
                              f"training rewards; {fix}")


def build_task_source(config: Config, tasks_file: Path | None = None) -> TaskSource:
    """The run's task source and curriculum, as the learner uses them. `rl train` builds it once
    before any process starts, so an empty file, a file without valid rows, a test split the data
    cannot fill or a curriculum that names unknown distributions is a one-line SourceError there;
    it saves the tasks to RUN/tasks.json, and the learner passes that file as `tasks_file`."""
    def curriculum(names: list[str]) -> Curriculum:
        try:
            return make_curriculum(config.curriculum_spec(), names)
        except ValueError as err:
            raise SourceError(f"curriculum: {err}") from None

    splits = load_splits(tasks_file) if tasks_file is not None and tasks_file.is_file() else None
    return TaskSource(config, curriculum, splits)


def overlong_error(split_name: str, distribution: str, limit: int) -> SourceError:
    return SourceError(f"every {split_name} task of {distribution} has a prompt over {limit} tokens "
                       "(rollout.max_model_len - max_new_tokens); raise rollout.max_model_len")


def check_prompts_fit(source: TaskSource, lengths: Callable[[list[Task]], list[int]], limit: int, chunk: int = 32) -> None:
    """SourceError where `drop_overlong` would leave a split of a distribution empty. Stops at each
    split's first prompt that fits, so a start-up check costs a few tokenizations, not all of them."""
    for split_name, split in (("train", source.train), ("test", source.test)):
        for name, tasks in split.items():
            if tasks and not any(n <= limit for start in range(0, len(tasks), chunk) for n in lengths(tasks[start:start + chunk])):
                raise overlong_error(split_name, name, limit)


def build_source_splits(source: ResolvedSource, env: EnvConfig, seed: int) -> tuple[dict[str, list[Task]], dict[str, list[Task]]]:
    """(train, test) task lists per distribution of one source, tagged with their reward sets; under
    env.label_free the training tasks lose their answers here, before anything else holds them."""
    config = source.config
    train_size = config.train_size or env.train_size
    test_size = config.test_size or env.test_size
    train: dict[str, list[Task]] = {}
    test: dict[str, list[Task]] = {}
    try:
        if config.type == "file":
            train, test, warnings = source.module.build_splits(config, config.train_size, test_size, seed, source.style)
            for warning in warnings:
                log.warning("%s", warning)
        else:
            few_shot = getattr(config, "few_shot", 0)
            think = {"few_shot_think": True} if getattr(config, "few_shot_think", False) else {}  # arithmetic only
            for name in config.distributions:
                train[name], test[name] = source.module.build_splits(name, train_size, test_size, seed, source.style, few_shot, **think)
    except ValueError as err:
        raise SourceError(f"{source.label}: {err}") from err
    if source.label_free:
        train = {name: [without_answer(t) for t in tasks if not solved_in_its_own_prompt(t)] for name, tasks in train.items()}
    for tasks in train.values():
        for task in tasks:
            task.reward_set = source.reward_set
    for tasks in test.values():
        for task in tasks:
            task.reward_set = source.eval_reward_set
    return train, test


def build_all_splits(sources: list[ResolvedSource], config: Config) -> tuple[dict[str, list[Task]], dict[str, list[Task]]]:
    all_train: dict[str, list[Task]] = {}
    all_test: dict[str, list[Task]] = {}
    for source in sources:
        train, test = build_source_splits(source, config.env, config.run.seed)
        clash = (set(train) | set(test)) & (set(all_train) | set(all_test))
        if clash:
            raise SourceError(f"{source.label}: distribution names {sorted(clash)} are already used by another source; "
                              "rename them (file sources: `name:`)")
        all_train.update(train)
        all_test.update(test)
    return all_train, all_test


def save_splits(source: TaskSource, path: Path) -> None:
    """The built tasks as JSON (RUN/tasks.json): the learner reads them instead of generating them again
    (the 12 Knights and Knaves sizes take about half a minute to generate)."""
    dump = {split: {name: [t.model_dump(mode="json") for t in tasks] for name, tasks in tasks_of.items()}
            for split, tasks_of in (("train", source.train), ("test", source.test))}
    path.write_text(json.dumps(dump))


def load_splits(path: Path) -> tuple[dict[str, list[Task]], dict[str, list[Task]]]:
    """What `save_splits` wrote; plain JSON, validated task by task (nothing is unpickled)."""
    data = json.loads(path.read_text())
    train, test = ({name: [Task.model_validate(t) for t in tasks] for name, tasks in data[split].items()} for split in ("train", "test"))
    return train, test


class TaskSource:
    def __init__(
        self, config: Config, curriculum_factory: Callable[[list[str]], Curriculum] = UniformCurriculum,
        splits: tuple[dict[str, list[Task]], dict[str, list[Task]]] | None = None,
    ):
        """`splits`: (train, test) as built before (`save_splits`), instead of building them again."""
        self.sources = resolve_sources(config.env, config.rewards, config.eval.rewards)
        self.train, self.test = splits if splits is not None else build_all_splits(self.sources, config)
        self.distributions = list(self.train)
        self.curriculum = curriculum_factory(self.distributions)
        self.rng = random.Random(config.run.seed)
        self.order: dict[str, list[int]] = {name: [] for name in self.train}

    def drop_overlong(self, lengths: Callable[[list[Task]], list[int]], limit: int) -> None:
        """Drop tasks whose prompt is longer than `limit` tokens (the engine would reject them), with a warning.

        `limit` is max_model_len - max_new_tokens, so every kept prompt has its whole answer budget.
        """
        for split_name, split in (("train", self.train), ("test", self.test)):
            for name, tasks in split.items():
                kept = [t for t, n in zip(tasks, lengths(tasks)) if n <= limit]
                if len(kept) < len(tasks):
                    log.warning("%s: dropped %d of %d %s tasks whose prompts exceed %d tokens (raise rollout.max_model_len to keep them)",
                                name, len(tasks) - len(kept), len(tasks), split_name, limit)
                if tasks and not kept:  # (a test_path may hold no rows of a distribution: warned when read)
                    raise overlong_error(split_name, name, limit)
                split[name] = kept
        self.order = {name: [] for name in self.train}  # positions refer to the new lists

    def state_dict(self) -> dict[str, Any]:
        """Where sampling stands: the random state, each distribution's remaining order, the curriculum."""
        version, internal, gauss = self.rng.getstate()
        return {
            "distributions": self.distributions,
            "rng": [version, list(internal), gauss],
            "order": {name: list(order) for name, order in self.order.items()},
            "curriculum": self.curriculum.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["distributions"] != self.distributions:
            raise SourceError(
                f"the checkpoint was taken with distributions {state['distributions']}, this config has "
                f"{self.distributions}; resume with the run's own env settings"
            )
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.order = {name: list(order) for name, order in state["order"].items()}
        self.curriculum.load_state_dict(state["curriculum"])

    def next_task(self) -> Task:
        name = self.curriculum.choose(self.rng)
        if not self.order[name]:
            self.order[name] = list(range(len(self.train[name])))
            self.rng.shuffle(self.order[name])
        return self.train[name][self.order[name].pop()]

    def next_tasks(self, count: int) -> list[Task]:
        return [self.next_task() for _ in range(count)]

    def held_out(self) -> list[Task]:
        return [task for name in self.test for task in self.test[name]]
