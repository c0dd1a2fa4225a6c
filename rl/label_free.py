"""Label-free training (`env.label_free`): training never reads a reference answer, evaluation does.

Training tasks are built as usual, then stripped before anything else sees them
(`envs.source.build_source_splits`): `answer` becomes "" and `metadata` is emptied, because
metadata can carry the answer too (a Knights and Knaves or file task's solution, a countdown
witness, an arithmetic task's operands). Few-shot examples stay in the prompts: they are fixed
demonstrations of the format, with their answers, the same for every task; the few training
tasks that are those examples are dropped, since their prompt would show their own answer. Held-out tasks keep both and are scored by the source's
evaluation reward set (`eval.rewards`, default the source's own correctness rewards).

The config check here refuses, at load time, a label-free run whose training rewards read the
answer: the built-ins that do (by name or by their import path) and any component marked
`correctness: true`. A user's own function cannot be inspected; it receives the stripped task.
This module imports nothing, so the check stays cheap.
"""

from __future__ import annotations

from typing import Any

# Built-in rewards that compare with task.answer or task.metadata, with their import paths
# (tests/test_label_free.py checks these against rewards.registry.BUILTINS and their source code).
ANSWER_READING_REWARDS = {
    "boxed_answer": "rewards.boxed:boxed_answer",
    "math_answer": "rewards.math_answer:math_answer",
    "cosine_length": "rewards.length:cosine_length",
    "knights_knaves": "rewards.knights_knaves:knights_knaves",
    "countdown": "rewards.countdown:countdown",
}
SUGGESTED = "format_length, surrogate_format or surrogate_length"


def reads_answer(component: Any) -> bool:
    """A component that needs the reference answer: an answer-reading built-in, or one that judges correctness."""
    return (component.name in ANSWER_READING_REWARDS or component.name in ANSWER_READING_REWARDS.values()
            or component.correctness is True)


def label_free_problem(config: Any) -> str | None:
    """Why this config cannot train label-free (one line), or None. `config` is an rl.config.Config."""
    if not config.env.label_free:
        return None
    for index, source in enumerate(config.env.sources):
        own = source.rewards is not None
        components = source.rewards if own else config.rewards
        if components is None:
            return (f"env.label_free: env.sources.{index} ({source.type}) would train on its default rewards, which read "
                    f"the reference answer; set `rewards:` to label-free ones ({SUGGESTED}), e.g. [{{name: format_length}}]")
        for component in components:
            if reads_answer(component):
                where = f"env.sources.{index}.rewards" if own else "rewards"
                why = "judges correctness" if component.correctness is True else "reads the reference answer"
                return (f"env.label_free: reward {component.name!r} in `{where}` {why}, but label-free training tasks carry "
                        f"no answer; train with {SUGGESTED} and leave correctness to evaluation (eval.rewards)")
    return None


def solved_in_its_own_prompt(task) -> bool:
    """The task's question is one of the solved examples before it (few-shot examples are drawn from
    the training problems), so its prompt shows its answer; label-free training leaves such tasks out."""
    question = task.messages[-1].content
    return any(m.role == "user" and m.content == question for m in task.messages[:-1])


def without_answer(task):
    """A copy of an rl.wire.Task with no answer and no metadata (it can hold the answer too)."""
    return task.model_copy(update={"answer": "", "metadata": {}})
