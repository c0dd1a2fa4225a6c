"""The report's completions: the best and the worst group of a few logged steps, each a <details>
with one row per sample, so a reader sees why one sample got a higher advantage than another.

Every field comes from RUN/completions.jsonl, model output included: all of it is HTML-escaped.
"""

from __future__ import annotations

from html import escape
from typing import Any

Rows = list[dict[str, Any]]
STEPS_SHOWN = 4
TEXT_LIMIT = 4000  # characters of one completion in the page; the file keeps all of it
COLUMNS = ("reward", "components", "advantage", "correct", "length", "finish", "version", "worker", "completion")


def cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {cell(v)}" for k, v in value.items())
    return "" if value is None else str(value)


def groups_by_step(rows: Rows) -> dict[int, list[Rows]]:
    """step -> its groups, each the rows of one (step, group), in the file's order."""
    steps: dict[int, dict[Any, Rows]] = {}
    for row in rows:
        if isinstance(row.get("step"), int):
            steps.setdefault(row["step"], {}).setdefault(row.get("group"), []).append(row)
    return {step: list(groups.values()) for step, groups in sorted(steps.items())}


def mean_reward(group: Rows) -> float:
    rewards = [r["reward"] for r in group if isinstance(r.get("reward"), (int, float))]
    return sum(rewards) / len(rewards) if rewards else float("nan")


def spread_steps(steps: list[int], count: int = STEPS_SHOWN) -> list[int]:
    """`count` steps spread over the run, first and last included."""
    if len(steps) <= count:
        return steps
    return sorted({steps[round(i * (len(steps) - 1) / (count - 1))] for i in range(count)})


def best_and_worst(groups: list[Rows]) -> list[tuple[str, Rows]]:
    ranked = sorted(groups, key=lambda g: mean_reward(g) if mean_reward(g) == mean_reward(g) else float("-inf"))
    if len(ranked) == 1:
        return [("only group", ranked[0])]
    return [("best group", ranked[-1]), ("worst group", ranked[0])]


def clipped(text: Any) -> str:
    text = "" if text is None else str(text)
    if len(text) <= TEXT_LIMIT:
        return text
    return text[:TEXT_LIMIT] + f"\n... ({len(text) - TEXT_LIMIT} more characters in completions.jsonl)"


def sample_row(row: dict) -> str:
    values = (row.get("reward"), row.get("reward_components"), row.get("advantage"), row.get("correct"), row.get("length"),
              row.get("finish_reason"), row.get("policy_version"), row.get("worker"))
    cells = "".join(f"<td>{escape(cell(v))}</td>" for v in values)
    return f'<tr class="sample">{cells}<td class="text">{escape(clipped(row.get("completion")))}</td></tr>'


def group_details(step: int, label: str, group: Rows, opened: bool) -> str:
    first = group[0]
    summary = (f"step {step} · {label} (group {cell(first.get('group'))}) · {cell(first.get('distribution'))} · "
               f"task {cell(first.get('task_id'))} · mean reward {mean_reward(group):.3f} · {len(group)} samples")
    header = "".join(f"<th>{name}</th>" for name in COLUMNS)
    rows = "".join(sample_row(row) for row in group)
    return (f'<details class="group"{" open" if opened else ""}><summary>{escape(summary)}</summary>'
            f'<p>prompt:</p><pre>{escape(clipped(first.get("prompt")))}</pre>'
            f"<table><tr>{header}</tr>{rows}</table></details>")


def completions_section(rows: Rows, missing: str) -> str:
    by_step = groups_by_step(rows)
    if not by_step:
        return f'<section id="completions"><h2>Completions</h2><p class="missing">{missing}</p></section>'
    shown = spread_steps(list(by_step))
    parts = [f"<p>The best and the worst group (by mean reward) of {len(shown)} of the {len(by_step)} logged steps; "
             "every sample of a group, in order. All of them are in completions.jsonl.</p>"]
    for index, step in enumerate(shown):
        for position, (label, group) in enumerate(best_and_worst(by_step[step])):
            parts.append(group_details(step, label, group, opened=index == 0 and position == 0))
    return '<section id="completions"><h2>Completions</h2>' + "".join(parts) + "</section>"
