"""Knights and Knaves: is every inhabitant's role in the answer the solution's?

Scoring follows Logic-RL (Xie et al. 2025) as used by DUMP: +2 correct, -1.5 wrong, -2 when the
answer cannot be read. The answer is read from the last <answer>...</answer> if there is one,
else from the whole completion; it names each inhabitant as "(1) Zoey is a knight\\n(2) Oliver is
a knave" or "Zoey is a knight, Oliver is a knave" (case-insensitive; "an" is accepted for "a").

Task contract: `task.metadata["solution"]` maps each name to "knight" or "knave", e.g.
{"Zoey": "knight", "Oliver": "knave"}. Without it, `task.answer` is parsed instead, written as
above with capitalised names.
"""

from __future__ import annotations

import re

from rl.wire import Task

ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
ROLES = {"knight": True, "knave": False}
# A capitalised (possibly multi-word) name, then "is a knight" / "is a knave" in any case.
NAMED_ROLE = re.compile(r"\b([A-Z][\w'-]*(?: [A-Z][\w'-]*)*)\s+(?i:is\s+an?\s+(knight|knave))\b")


def answer_text(completion: str) -> str:
    """The last <answer>...</answer> contents if any, else the whole completion."""
    matches = ANSWER_TAG.findall(completion)
    return matches[-1] if matches else completion


def parse_assignment(text: str, names: list[str]) -> dict[str, bool] | None:
    """name -> True for a knight, False for a knave; None if some name has no role or two different ones."""
    assignment = {}
    for name in names:
        said = re.findall(rf"\b{re.escape(name)}\s+is\s+an?\s+(knight|knave)\b", text, flags=re.IGNORECASE)
        roles = {ROLES[role.lower()] for role in said}
        if len(roles) != 1:
            return None
        assignment[name] = roles.pop()
    return assignment


def solution_of(task: Task) -> dict[str, bool]:
    """The task's solution as name -> is_knight, from metadata["solution"] or else from task.answer."""
    solution = task.metadata.get("solution")
    if solution is not None:
        bad = {name: role for name, role in solution.items() if str(role).lower() not in ROLES}
        if bad or not solution:
            raise ValueError(f"task {task.task_id}: metadata['solution'] must map names to 'knight'/'knave', got {solution!r}")
        return {name: ROLES[role.lower()] for name, role in solution.items()}
    names = list(dict.fromkeys(name for name, _ in NAMED_ROLE.findall(task.answer)))
    parsed = parse_assignment(task.answer, names) if names else None
    if parsed is None:
        raise ValueError(f"task {task.task_id}: no metadata['solution'] and answer {task.answer!r} does not read as "
                         "'Name is a knight/knave' for each inhabitant")
    return parsed


def knights_knaves(
    completion: str,
    task: Task,
    *,
    correct: float = 2.0,
    wrong: float = -1.5,
    unparsable: float = -2.0,
    num_tokens: int | None = None,
) -> float:
    """`correct` if every inhabitant's role matches the solution, `wrong` if not, `unparsable` if unreadable."""
    solution = solution_of(task)
    predicted = parse_assignment(answer_text(completion), list(solution))
    if predicted is None:
        return unparsable
    return correct if predicted == solution else wrong
