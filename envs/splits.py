"""The one rule every generator splits by: the held-out tasks are the first ones drawn.

A generator draws `test_size + train_size` distinct problems in a seeded order; the first
`test_size` are the test split, the rest training. So the splits never overlap, and the test
split does not change when only the training size does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from rl.wire import Task

Problem = TypeVar("Problem")


def held_out_first(
    problems: Sequence[Problem], test_size: int, make_task: Callable[[str, int, Problem], Task]
) -> tuple[list[Task], list[Task]]:
    """(train, test) tasks; `make_task(split, index, problem)` builds one task."""
    test = [make_task("test", i, p) for i, p in enumerate(problems[:test_size])]
    train = [make_task("train", i, p) for i, p in enumerate(problems[test_size:])]
    return train, test
