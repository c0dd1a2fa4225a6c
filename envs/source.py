"""The task source: which training task comes next, and the held-out tasks for evaluation.

Inside a distribution, tasks are drawn without replacement and reshuffled when exhausted, so an
epoch covers the data. Which distribution comes next is the curriculum's decision.
"""

from __future__ import annotations

import random

from envs.arithmetic import build_splits
from rl.config import EnvConfig
from rl.curriculum import Curriculum
from rl.wire import Task


class TaskSource:
    def __init__(self, env: EnvConfig, seed: int, curriculum: Curriculum):
        self.train: dict[str, list[Task]] = {}
        self.test: dict[str, list[Task]] = {}
        for name in env.distributions:
            self.train[name], self.test[name] = build_splits(
                name, env.train_size, env.test_size, seed, env.instruction, env.system_prompt, env.few_shot
            )
        self.curriculum = curriculum
        self.rng = random.Random(seed)
        self.order: dict[str, list[int]] = {name: [] for name in self.train}

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
