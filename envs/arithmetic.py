"""Arithmetic word-free problems ("What is 37 + 58?") with difficulty levels as distributions.

A distribution name is `<op>_<digits>d`: add_1d is 1-digit addition, sub_3d 3-digit subtraction
(non-negative results), mul_2d 2-digit multiplication. Every split is deterministic by seed, and
the held-out split never shares a problem with the training split.
"""

from __future__ import annotations

import random
import re

from envs.prompts import PromptStyle
from envs.splits import held_out_first
from rl.wire import ChatMessage, Task

DEFAULT_DISTRIBUTIONS = ["add_1d", "add_2d"]
DEFAULT_INSTRUCTION = "Put the final answer in \\boxed{}."
DEFAULT_SYSTEM_PROMPT = None
DEFAULT_REWARDS = [{"name": "boxed_answer", "weight": 1.0}, {"name": "boxed_format", "weight": 0.1}]
OPERATORS = {"add": "+", "sub": "-", "mul": "*"}
NAME_PATTERN = re.compile(r"^(add|sub|mul)_([1-9])d$")


def parse_distribution(name: str) -> tuple[str, int]:
    match = NAME_PATTERN.match(name)
    if not match:
        raise ValueError(
            f"unknown arithmetic distribution {name!r}: use <op>_<digits>d with op in add/sub/mul, e.g. add_2d"
        )
    return match.group(1), int(match.group(2))


def solve(op: str, a: int, b: int) -> int:
    return a + b if op == "add" else a - b if op == "sub" else a * b


def problem_space_size(op: str, digits: int) -> int:
    low = 0 if digits == 1 else 10 ** (digits - 1)
    count = 10**digits - low
    return count * count


def draw_problems(name: str, count: int, seed: int) -> list[tuple[int, int]]:
    """`count` distinct operand pairs (fewer if the space is smaller), in a seeded order."""
    op, digits = parse_distribution(name)
    low = 0 if digits == 1 else 10 ** (digits - 1)
    high = 10**digits - 1
    rng = random.Random(f"{seed}-{name}")
    if problem_space_size(op, digits) <= 4 * count:
        pairs = [(a, b) for a in range(low, high + 1) for b in range(low, high + 1)]
        rng.shuffle(pairs)
        pairs = pairs[:count]
    else:
        seen: set[tuple[int, int]] = set()
        pairs = []
        while len(pairs) < count:
            pair = (rng.randint(low, high), rng.randint(low, high))
            if pair not in seen:
                seen.add(pair)
                pairs.append(pair)
    if op == "sub":
        pairs = [(max(a, b), min(a, b)) for a, b in pairs]
        pairs = list(dict.fromkeys(pairs))
    return pairs


def question_text(op: str, a: int, b: int) -> str:
    return f"What is {a} {OPERATORS[op]} {b}?"


def one_line(style: PromptStyle) -> PromptStyle:
    """The instruction follows the question on the same line ("What is 3 + 4? Put ...")."""
    return PromptStyle(style.system_prompt, style.instruction, separator=" ")


def demonstration_reply(op: str, a: int, b: int, think: bool = False) -> str:
    """`a + b = \\boxed{c}`, or with `think` `<think>a + b = c</think> The answer is \\boxed{c}.`"""
    expression, answer = f"{a} {OPERATORS[op]} {b}", solve(op, a, b)
    if think:
        return f"<think>{expression} = {answer}</think> The answer is \\boxed{{{answer}}}."
    return f"{expression} = \\boxed{{{answer}}}"


def demonstrations(name: str, pairs: list[tuple[int, int]], style: PromptStyle, think: bool = False) -> list[ChatMessage]:
    """Solved problems as prior chat turns (see `demonstration_reply`)."""
    op, _ = parse_distribution(name)
    turns = []
    for a, b in pairs:
        turns.append(ChatMessage(role="user", content=one_line(style).user_text(question_text(op, a, b))))
        turns.append(ChatMessage(role="assistant", content=demonstration_reply(op, a, b, think)))
    return turns


def make_task(
    name: str, split: str, index: int, a: int, b: int, style: PromptStyle, shots: list[ChatMessage] = (),
) -> Task:
    op, _ = parse_distribution(name)
    return Task(
        task_id=f"{name}/{split}/{index}",
        distribution=name,
        messages=one_line(style).messages(question_text(op, a, b), shots),
        answer=str(solve(op, a, b)),
        metadata={"a": a, "b": b, "op": op},
    )


def build_splits(
    name: str, train_size: int, test_size: int, seed: int, style: PromptStyle, few_shot: int = 0, few_shot_think: bool = False,
) -> tuple[list[Task], list[Task]]:
    """Disjoint (train, test) task lists; test takes the first `test_size` problems of the draw.

    With `few_shot` > 0, the first training problems are shown solved before every question (the
    same turns for every task, so the engine's prefix cache shares them); they never come from
    the test split.
    """
    pairs = draw_problems(name, train_size + test_size, seed)
    if len(pairs) <= test_size + few_shot:
        raise ValueError(f"distribution {name} has only {len(pairs)} distinct problems; lower env.test_size")
    shots = demonstrations(name, pairs[test_size:test_size + few_shot], style, few_shot_think)
    return held_out_first(pairs, test_size, lambda split, i, pair: make_task(name, split, i, *pair, style, shots))
