"""Countdown: combine k given numbers with + - * / and parentheses to reach a target.

The puzzle of TinyZero (Pan et al. 2025). A distribution `cd_<k>n` (2 <= k <= 6) has k numbers
per task; the difficulty is k. Every task is solvable by construction:

- the k numbers are distinct integers drawn from 1..99 (distinct, so "each number at most once"
  reads without ambiguity; the countdown reward would also accept repeated numbers as a multiset);
- a random expression tree over all k numbers is built bottom-up: two pending sub-expressions are
  joined by a random operator among those that keep every intermediate value a positive integer
  no larger than MAX_INTERMEDIATE (`-` puts the larger value first, `/` only divides exactly and
  never by 1, `*` only while the product stays in bounds, `+` likewise);
- the value of the whole expression is the target; it must lie in 1..MAX_TARGET and differ from
  every given number (otherwise the task would be answered by copying one number).

The expression is kept as the witness in `metadata["solution"]`; other solutions usually exist
and score the same. The numbers are shown in a shuffled order, so the witness's order of leaves
gives nothing away. Splits are deterministic by seed, and no problem (the sorted numbers and the
target) appears twice or in both splits: the first `test_size` distinct problems are the test split.
"""

from __future__ import annotations

import random
import re

from envs.prompts import PromptStyle
from envs.splits import held_out_first
from rl.wire import Task

MIN_NUMBERS, MAX_NUMBERS = 2, 6
DISTRIBUTIONS = [f"cd_{k}n" for k in range(MIN_NUMBERS, MAX_NUMBERS + 1)]
DEFAULT_DISTRIBUTIONS = ["cd_3n", "cd_4n"]
NAME_PATTERN = re.compile(r"^cd_(\d+)n$")

NUMBER_RANGE = (1, 99)
MAX_TARGET = 999
MAX_INTERMEDIATE = 9999
MAX_FAILED_IN_A_ROW = 20000  # rejected draws in a row before the problem space counts as exhausted

DEFAULT_INSTRUCTION = (
    "Reason step by step inside <think> </think>, then write only the expression inside "
    "<answer> </answer>, for example <answer>(1 + 2) * 3</answer>. Each number may be used at most once."
)
DEFAULT_SYSTEM_PROMPT = (
    "First think about the problem inside <think> </think>, then give your final answer inside <answer> </answer>."
)
# The format reward is +1 / -1 (rewards/format.py), so its weight w moves a total by 2w. At 0.5 a
# well-formatted wrong answer (0 + 0.5) would tie with a correct but unformatted one (1 - 0.5);
# at 0.25 correctness always comes first and format breaks ties: 1.25 > 0.75 > 0.25 > -0.25.
DEFAULT_REWARDS = [{"name": "countdown", "weight": 1.0}, {"name": "format", "weight": 0.25}]

# Operator precedence, for writing the fewest parentheses that keep the tree's meaning.
PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


def parse_distribution(name: str) -> int:
    """`cd_4n` -> 4; ValueError naming the valid names for anything else."""
    match = NAME_PATTERN.match(name)
    k = int(match.group(1)) if match else 0
    if not MIN_NUMBERS <= k <= MAX_NUMBERS:
        raise ValueError(
            f"unknown countdown distribution {name!r}: use cd_<k>n with {MIN_NUMBERS} <= k <= {MAX_NUMBERS} "
            f"({', '.join(DISTRIBUTIONS)})"
        )
    return k


class Node:
    """A sub-expression: its exact value, its text, and its top operator (None for a number)."""

    __slots__ = ("op", "text", "value")

    def __init__(self, value: int, text: str, op: str | None = None):
        self.value, self.text, self.op = value, text, op


def operand_text(node: Node, parent_op: str, right: bool) -> str:
    """The child's text, parenthesised where the parent's operator would otherwise regroup it."""
    if node.op is None:
        return node.text
    lower = PRECEDENCE[node.op] < PRECEDENCE[parent_op]
    # a - (b + c), a / (b * c), a - (b - c): same precedence on the right of - or / needs parentheses.
    regroups = right and PRECEDENCE[node.op] == PRECEDENCE[parent_op] and parent_op in "-/"
    return f"({node.text})" if lower or regroups else node.text


def join(left: Node, op: str, right: Node) -> Node:
    value = {"+": left.value + right.value, "-": left.value - right.value,
             "*": left.value * right.value, "/": left.value // right.value}[op]
    text = f"{operand_text(left, op, False)} {op} {operand_text(right, op, True)}"
    return Node(value, text, op)


def combinations(a: Node, b: Node) -> list[tuple[Node, str, Node]]:
    """Every (left, op, right) over a and b whose value is a positive integer within bounds.

    The caller swaps the operands of + and * at random; - puts the larger value first.
    """
    out = []
    if a.value + b.value <= MAX_INTERMEDIATE:
        out.append((a, "+", b))
    if a.value != b.value:
        big, small = (a, b) if a.value > b.value else (b, a)
        out.append((big, "-", small))
    if a.value * b.value <= MAX_INTERMEDIATE:
        out.append((a, "*", b))
    for num, den in ((a, b), (b, a)):
        if den.value > 1 and num.value % den.value == 0:
            out.append((num, "/", den))
    return out


def random_expression(rng: random.Random, numbers: list[int]) -> Node | None:
    """A random expression using each number once, or None if a step had no valid operator."""
    pending = [Node(n, str(n)) for n in numbers]
    while len(pending) > 1:
        i, j = rng.sample(range(len(pending)), 2)
        a, b = pending[i], pending[j]
        options = combinations(a, b)
        if not options:
            return None
        left, op, right = rng.choice(options)
        if op in "+*" and rng.random() < 0.5:
            left, right = right, left
        pending = [node for index, node in enumerate(pending) if index not in (i, j)] + [join(left, op, right)]
    return pending[0]


def draw_problem(rng: random.Random, k: int) -> tuple[list[int], int, str] | None:
    """(numbers in display order, target, witness expression), or None if this draw is rejected."""
    numbers = rng.sample(range(NUMBER_RANGE[0], NUMBER_RANGE[1] + 1), k)
    expression = random_expression(rng, numbers)
    if expression is None or not 1 <= expression.value <= MAX_TARGET or expression.value in numbers:
        return None
    rng.shuffle(numbers)
    return numbers, expression.value, expression.text


def draw_problems(name: str, count: int, seed: int) -> list[tuple[list[int], int, str]]:
    """`count` distinct problems in a seeded order; ValueError if the space seems exhausted."""
    k = parse_distribution(name)
    rng = random.Random(f"{seed}-{name}")
    seen: set[tuple[tuple[int, ...], int]] = set()
    problems = []
    failures = 0  # in a row
    while len(problems) < count:
        problem = draw_problem(rng, k)
        key = (tuple(sorted(problem[0])), problem[1]) if problem else None
        if key is None or key in seen:
            failures += 1
            if failures > MAX_FAILED_IN_A_ROW:
                raise ValueError(
                    f"countdown distribution {name}: found only {len(problems)} distinct problems of the "
                    f"{count} asked for; lower train_size/test_size"
                )
            continue
        failures = 0
        seen.add(key)
        problems.append(problem)
    return problems


def question_text(numbers: list[int], target: int) -> str:
    """The rules are in the question itself, so a custom instruction only has to ask for a format."""
    return (f"Using the numbers {numbers}, each at most once, and the operations + - * / with parentheses, "
            f"write an expression equal to {target}.")


def make_task(name: str, split: str, index: int, problem: tuple[list[int], int, str], style: PromptStyle) -> Task:
    numbers, target, solution = problem
    return Task(
        task_id=f"{name}/{split}/{index}",
        distribution=name,
        messages=style.messages(question_text(numbers, target)),
        answer=str(target),
        metadata={"numbers": list(numbers), "target": target, "solution": solution},
    )


def build_splits(
    name: str, train_size: int, test_size: int, seed: int, style: PromptStyle, few_shot: int = 0
) -> tuple[list[Task], list[Task]]:
    """Disjoint (train, test) task lists; test takes the first `test_size` distinct problems drawn."""
    if few_shot:
        raise ValueError("few_shot is not supported for countdown")
    problems = draw_problems(name, train_size + test_size, seed)
    return held_out_first(problems, test_size, lambda split, i, problem: make_task(name, split, i, problem, style))
