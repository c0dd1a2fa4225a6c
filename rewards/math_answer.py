"""Correctness of a final math answer, by symbolic equivalence with math-verify.

The answer is the last \\boxed{...} of the completion (`source="boxed"`) or the contents of its
last <answer>...</answer> (`source="answer_tag"`). Both it and the reference are parsed with
math-verify (Kydlíček et al., HuggingFace, https://github.com/huggingface/Math-Verify) and
compared with `verify(gold, prediction)`, which handles integers, decimals, fractions, LaTeX
(\\frac, \\sqrt, \\pi), percentages (50\\% = 0.5 = 50), sets, intervals, `x = 3` against `3`
and thousands separators written `1,234` or `1{,}234`.

Where we depart from calling math-verify on the raw text:
- A bare extracted string like `\\sqrt{2}` is not found by math-verify without delimiters, so it
  is wrapped in `$...$` before parsing (text already holding `$` or `\\boxed` is parsed as is).
- LaTeX spacing used as a thousands separator (`1\\,234`, `1\\!234`, `1\\;234`) is removed first:
  math-verify reads `1\\,234` as 235.
- A trailing full stop (`\\boxed{\\frac{1}{2}.}`) is dropped: math-verify parses nothing from it.

Statuses: "missing" (no boxed / answer tag), "unparsable" (extracted, but math-verify finds no
mathematical object in it), "wrong", "correct".

Timeouts: math-verify bounds parse and verify with signal.alarm, which only works in a process's
main thread; elsewhere we pass no timeout (math-verify would raise otherwise), so a pathological
expression can then take long. Rewards are run in worker processes' main threads.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from math_verify import parse, verify

from rewards.boxed import extract_boxed
from rl.wire import Task

Source = Literal["boxed", "answer_tag"]
Status = Literal["correct", "wrong", "missing", "unparsable"]

TIMEOUT_S = 5
ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# `1\,234`, `1\!234`, `1\;234`: LaTeX spacing between digit groups of three.
LATEX_THOUSANDS = re.compile(r"(?<=\d)(?:\\,|\\!|\\;)(?=\d{3}(?!\d))")
UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


@dataclass(frozen=True)
class MathCheck:
    status: Status
    extracted: str | None  # the answer text found in the completion, None when missing


def extract_answer(text: str, source: Source = "boxed") -> str | None:
    """The last \\boxed{...} contents, or the last <answer>...</answer> contents; None if absent."""
    if source == "boxed":
        return extract_boxed(text)
    if source == "answer_tag":
        matches = ANSWER_TAG.findall(text)
        return matches[-1] if matches else None
    raise ValueError(f"unknown answer source {source!r}: use 'boxed' or 'answer_tag'")


def normalize(answer: str) -> str:
    """What math-verify cannot do itself (see the module docstring): LaTeX thousands spacing, a final full stop."""
    answer = LATEX_THOUSANDS.sub("", answer.strip())
    return answer[:-1].rstrip() if answer.endswith(".") else answer


def timeout_s() -> int | None:
    """math-verify's signal.alarm timeout works only in the main thread; elsewhere, none."""
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=4096)
def parse_math(answer: str) -> tuple:
    """math-verify's parse of one answer string (sympy objects, then the matched string)."""
    answer = normalize(answer)
    if not answer:
        return ()
    delimited = UNESCAPED_DOLLAR.search(answer) or "\\boxed" in answer
    return tuple(parse(answer if delimited else f"${answer}$", parsing_timeout=timeout_s()))


def has_math(parsed: tuple) -> bool:
    """math-verify falls back to returning the raw string when it finds no mathematical object."""
    return any(not isinstance(item, str) for item in parsed)


def check_math(completion: str, reference: str, source: Source = "boxed") -> MathCheck:
    """Classify the completion's final answer against the reference answer."""
    extracted = extract_answer(completion, source)
    if extracted is None:
        return MathCheck("missing", None)
    gold = parse_math(reference)
    if not has_math(gold):
        raise ValueError(f"reference answer {reference!r} has no mathematical content math-verify can parse; "
                         "fix the data set or use a string-matching reward for this task")
    prediction = parse_math(extracted)
    if not has_math(prediction):
        return MathCheck("unparsable", extracted)
    # verify is not symmetric: gold first (math-verify's docstring).
    correct = verify(list(gold), list(prediction), timeout_seconds=timeout_s())
    return MathCheck("correct" if correct else "wrong", extracted)


def math_answer(
    completion: str,
    task: Task,
    *,
    source: Source = "boxed",
    correct: float = 1.0,
    wrong: float = 0.0,
    missing: float = 0.0,
    unparsable: float = 0.0,
    num_tokens: int | None = None,
) -> float:
    """`correct` if the final answer is equivalent to task.answer, else the value of its status."""
    status = check_math(completion, task.answer, source).status
    return {"correct": correct, "wrong": wrong, "missing": missing, "unparsable": unparsable}[status]
