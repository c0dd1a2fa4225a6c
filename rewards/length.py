"""Rewards on the completion's length in tokens.

The caller passes `num_tokens` (the completion's length in tokens, as sampled); these rewards
raise if it is missing rather than guess it from characters.
"""

from __future__ import annotations

import math

from rewards.math_answer import Source, check_math
from rl.wire import Task


def require_tokens(name: str, num_tokens: int | None) -> int:
    if num_tokens is None:
        raise ValueError(f"reward {name!r} needs num_tokens (the completion's length in tokens); the caller must pass it")
    if num_tokens < 0:
        raise ValueError(f"reward {name!r}: num_tokens must be >= 0, got {num_tokens}")
    return num_tokens


def overlong_penalty(completion: str, task: Task, *, max_len: int, buffer: int, num_tokens: int | None = None) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025, "DAPO", eq. 13).

    R(L) = 0 if L <= max_len - buffer; (max_len - buffer - L) / buffer if max_len - buffer < L <= max_len;
    -1 if L > max_len. DAPO used max_len = 20480, buffer = 4096.
    """
    length = require_tokens("overlong_penalty", num_tokens)
    if not 0 < buffer <= max_len:
        raise ValueError(f"overlong_penalty needs 0 < buffer <= max_len, got buffer={buffer}, max_len={max_len}")
    expected = max_len - buffer
    if length <= expected:
        return 0.0
    if length <= max_len:
        return (expected - length) / buffer
    return -1.0


def cosine_length(
    completion: str,
    task: Task,
    *,
    max_len: int,
    r0_correct: float = 2.0,
    rL_correct: float = 1.0,
    r0_wrong: float = -10.0,
    rL_wrong: float = 0.0,
    exceed: float = -10.0,
    source: Source = "boxed",
    num_tokens: int | None = None,
    finish_reason: str | None = None,
) -> float:
    """Cosine length scaling (Yeo et al. 2025, "Demystifying Long Chain-of-Thought Reasoning in LLMs", sec. 4).

    CosFn(L) = rL + 0.5 (r0 - rL)(1 + cos(pi L / max_len)): r0 at L = 0, rL at L = max_len, with
    (r0, rL) the correct pair if check_math says correct, else the wrong pair (a missing or
    unparsable answer counts as wrong); a truncated generation (finish_reason "length", the paper's
    "reached the context limit") or L > max_len gives `exceed`. The defaults are the values of
    the authors' released cosine run (eddycmu/demystify-long-cot, section 4.2 script: correct 2 -> 1,
    wrong -10 -> 0, exceed -10): short correct answers earn most, short wrong ones lose most.
    """
    length = require_tokens("cosine_length", num_tokens)
    if max_len <= 0:
        raise ValueError(f"cosine_length needs max_len > 0, got {max_len}")
    if length > max_len or finish_reason == "length":
        return exceed
    correct = check_math(completion, task.answer, source).status == "correct"
    r0, rL = (r0_correct, rL_correct) if correct else (r0_wrong, rL_wrong)
    return rL + 0.5 * (r0 - rL) * (1.0 + math.cos(math.pi * length / max_len))


def length_penalty(
    completion: str, task: Task, *, coef: float = -0.001, target: int = 0, num_tokens: int | None = None
) -> float:
    """Linear in the tokens beyond `target`: coef * max(0, L - target); a negative coef is a penalty."""
    length = require_tokens("length_penalty", num_tokens)
    return coef * max(0, length - target)
