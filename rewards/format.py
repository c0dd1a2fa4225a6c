"""Format reward: the completion is `<think>...</think>` then `<answer>...</answer>`, nothing after.

Follows the format check of Logic-RL (Xie et al. 2025, "Logic-RL: Unleashing LLM Reasoning with
Rule-Based Reinforcement Learning") as used by DUMP (+1 pass / -1 fail): the whole completion must
match the pattern, and with the default pattern each of the four tags must appear exactly once
(a non-greedy full match alone would accept a second <answer> block inside the first).

A prompt that pre-fills `<think>` leaves it out of the completion: pass a pattern without it.
"""

from __future__ import annotations

import re

from rl.wire import Task

DEFAULT_PATTERN = r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*"
DEFAULT_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def think_answer_format(
    completion: str,
    task: Task,
    *,
    pattern: str = DEFAULT_PATTERN,
    reward_pass: float = 1.0,
    reward_fail: float = -1.0,
    num_tokens: int | None = None,
) -> float:
    """`reward_pass` if the whole completion matches `pattern` (DOTALL), else `reward_fail`."""
    if re.fullmatch(pattern, completion, flags=re.DOTALL) is None:
        return reward_fail
    if pattern == DEFAULT_PATTERN and any(completion.count(tag) != 1 for tag in DEFAULT_TAGS):
        return reward_fail
    return reward_pass
