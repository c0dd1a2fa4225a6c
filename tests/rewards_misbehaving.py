"""User reward functions that misbehave, for the reward pool tests."""

import os
import time

from rewards import reward


def raises(completion, task):
    raise ValueError("this reward always fails")


def sleeps(completion, task, *, seconds: float = 60.0):
    time.sleep(seconds)
    return 1.0


def exits(completion, task):
    os._exit(3)


def length(completion, task, *, num_tokens=None):
    return float(num_tokens)


@reward("rank_in_group", batch=True)
def rank_in_group(completions, tasks):
    """A group reward: 1 for the shortest completion of the group, 0 for the others."""
    shortest = min(range(len(completions)), key=lambda i: len(completions[i]))
    return [float(i == shortest) for i in range(len(completions))]


def parts(completion, task):
    """Returns named parts; the component's value is their sum."""
    return {"letters": float(sum(ch.isalpha() for ch in completion)), "digits": float(sum(ch.isdigit() for ch in completion))}


def wrong_type(completion, task):
    return "not a number"


def not_a_number(completion: str, task) -> float:
    return float("nan")
