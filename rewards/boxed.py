"""Rewards on the final answer written in \\boxed{...}.

`boxed_answer` is an exact-match reward on the number inside the last \\boxed{}; symbolic
equivalence (fractions, LaTeX, sets) belongs to the math-verify based `math_answer` reward.
"""

from __future__ import annotations

import re

from rl.wire import Task

BOXED = "\\boxed{"
NUMBER = re.compile(r"^[-+]?\d[\d,]*(\.\d+)?$")


def extract_boxed(text: str) -> str | None:
    """Contents of the last \\boxed{...}, with nested braces; None if there is none or it is unclosed."""
    start = text.rfind(BOXED)
    if start < 0:
        return None
    depth, begin = 1, start + len(BOXED)
    for i in range(begin, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i]
    return None


def parse_number(text: str) -> float | None:
    cleaned = text.strip().strip("$").replace(" ", "")
    if not NUMBER.match(cleaned):
        return None
    return float(cleaned.replace(",", ""))


def boxed_answer(completion: str, task: Task) -> float:
    """1 if the last \\boxed{} holds a number equal to the reference answer, else 0."""
    boxed = extract_boxed(completion)
    if boxed is None:
        return 0.0
    value, reference = parse_number(boxed), parse_number(task.answer)
    return float(value is not None and reference is not None and value == reference)


def boxed_format(completion: str, task: Task) -> float:
    """1 if the completion ends its answer in a single, closed \\boxed{} holding a number, else 0."""
    boxed = extract_boxed(completion)
    return float(boxed is not None and completion.count(BOXED) == 1 and parse_number(boxed) is not None)
