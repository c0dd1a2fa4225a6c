"""Label-free surrogate rewards: format and length instead of the reference answer.

From "Surrogate Signals from Format and Length: Reinforcement Learning for Solving Mathematical
Problems without Ground Truth Answers" (Xin et al. 2025). None of these rewards reads `task.answer`
or `task.metadata`, so they can score training tasks that carry no answer (`env.label_free`).

- `surrogate_length`: with x = completion tokens / max tokens and peak position p (paper: 0.5),
  1 - (1 - x/p)^2 for x <= p (0 at x = 0, 1 at x = p), else 1 - 2((x - p)/(1 - p))^2 (-1 at x = 1).
- `surrogate_format`: 0.5 if a <think>...</think> block is present, plus 0.5 if a final answer can
  be extracted (the last \\boxed{}, or the last <answer>) and math-verify finds a mathematical
  object in it.
- `format_length`: format + length when an answer was extracted (whether or not it parses), else
  min(0, length): without an answer, length can only punish.

`max_tokens` is the budget x is relative to; unset, it is the request's own `max_new_tokens` (the
worker passes it: rollout.max_new_tokens for training, the evaluation budget for held-out tasks).
x is clipped to [0, 1]: with a `max_tokens` below the sampling budget, a longer completion scores
-1, the curve's floor, rather than an unbounded penalty.
"""

from __future__ import annotations

from rewards.math_answer import Source, extract_answer, has_math, parse_math
from rl.wire import Task

PEAK = 0.5  # the paper's p


def length_score(x: float, p: float = PEAK) -> float:
    """The paper's length curve at x in [0, 1] (clipped): a parabola up to 1 at x = p, then down to -1 at x = 1."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"surrogate length needs 0 < p < 1, got p={p}")
    x = min(max(x, 0.0), 1.0)
    if x <= p:
        return 1.0 - (1.0 - x / p) ** 2
    return 1.0 - 2.0 * ((x - p) / (1.0 - p)) ** 2


def length_fraction(num_tokens: int | None, max_tokens: int | None, max_new_tokens: int | None) -> float:
    """x = completion tokens / max tokens (`max_tokens` if set, else the request's budget)."""
    if num_tokens is None:
        raise ValueError("the surrogate length reward needs num_tokens (the completion's length in tokens); the caller must pass it")
    budget = max_tokens if max_tokens is not None else max_new_tokens
    if budget is None:
        raise ValueError("the surrogate length reward needs max_tokens: set it in the reward's config entry, "
                         "or let the worker pass the request's max_new_tokens")
    if budget <= 0:
        raise ValueError(f"the surrogate length reward needs max_tokens > 0, got {budget}")
    return num_tokens / budget


def has_think_block(completion: str, open_tag: str = "<think>", close_tag: str = "</think>") -> bool:
    """An opening tag followed, later, by a closing tag."""
    start = completion.find(open_tag)
    return start >= 0 and completion.find(close_tag, start + len(open_tag)) >= 0


def answer_parses(completion: str, source: Source = "boxed") -> bool:
    """A final answer can be extracted and math-verify finds a mathematical object in it."""
    extracted = extract_answer(completion, source)
    return extracted is not None and has_math(parse_math(extracted))


def format_score(think: bool, answer: bool, think_weight: float = 0.5, answer_weight: float = 0.5) -> float:
    return think_weight * think + answer_weight * answer


def surrogate_length(
    completion: str, task: Task, *, p: float = PEAK, max_tokens: int | None = None,
    num_tokens: int | None = None, max_new_tokens: int | None = None,
) -> float:
    """The length curve at x = num_tokens / max_tokens."""
    return length_score(length_fraction(num_tokens, max_tokens, max_new_tokens), p)


def surrogate_format(
    completion: str, task: Task, *, think_open: str = "<think>", think_close: str = "</think>",
    source: Source = "boxed", think_weight: float = 0.5, answer_weight: float = 0.5,
) -> float:
    """think_weight x (a think block) + answer_weight x (an answer math-verify can parse)."""
    return format_score(has_think_block(completion, think_open, think_close), answer_parses(completion, source),
                        think_weight, answer_weight)


def format_length(
    completion: str, task: Task, *, p: float = PEAK, max_tokens: int | None = None,
    think_open: str = "<think>", think_close: str = "</think>", source: Source = "boxed",
    think_weight: float = 0.5, answer_weight: float = 0.5,
    num_tokens: int | None = None, max_new_tokens: int | None = None,
) -> dict[str, float]:
    """The format-length score, logged as its parts (reward/format_length.format and .length sum to it).

    With an extracted answer (parsable or not: parsing is the format term's business) it is
    format + length; without one, min(0, length), logged as .length with .format 0.
    """
    length = length_score(length_fraction(num_tokens, max_tokens, max_new_tokens), p)
    extracted = extract_answer(completion, source)
    if extracted is None:
        return {"format": 0.0, "length": min(0.0, length)}
    think = has_think_block(completion, think_open, think_close)
    parsed = has_math(parse_math(extracted))
    return {"format": format_score(think, parsed, think_weight, answer_weight), "length": length}
