"""The W&B completions table: which rows of a step's completions log it shows, and its columns.

A table keeps whole groups (a reader compares a group's samples to see why one got a higher
advantage), at most `limit` rows. To show contrast it takes groups alternately from the top and
the bottom of the step's reward spread (max - min in the group): the group that taught most, the
one that taught least (often all equal: advantage 0), the second most, ...; shown in step order.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

FIRST_COLUMNS = ["step", "distribution", "prompt", "completion", "reward"]
LAST_COLUMNS = ["advantage", "correct", "length", "finish_reason", "policy_version", "worker"]


def groups_of(rows: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Group index -> its rows, in step order."""
    groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["group"]].append(row)
    return dict(sorted(groups.items()))


def reward_spread(group: list[dict[str, Any]]) -> float:
    rewards = [row["reward"] for row in group]
    return max(rewards) - min(rewards)


def table_rows(rows: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """At most `limit` rows of whole groups, alternately the widest and the narrowest reward spread, in step order."""
    groups = groups_of(rows)
    widest = sorted(groups, key=lambda g: (-reward_spread(groups[g]), g))  # ties in step order
    narrowest = sorted(groups, key=lambda g: (reward_spread(groups[g]), g))
    order = list(dict.fromkeys(g for pair in zip(widest, narrowest) for g in pair))  # alternately, each group once
    chosen, room = [], limit
    for g in order:
        if len(groups[g]) <= room:
            chosen.append(g)
            room -= len(groups[g])
    return [row for g in sorted(chosen) for row in groups[g]]


def table_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The table's columns: one `reward/<name>` per reward component of any row (sets differ per source)."""
    components = sorted({name for row in rows for name in row["reward_components"]})
    return FIRST_COLUMNS + [f"reward/{name}" for name in components] + LAST_COLUMNS


def table_data(rows: list[dict[str, Any]], columns: list[str]) -> list[list[Any]]:
    """The rows as the columns list them; a component a row's reward set lacks is None."""
    def cell(row: dict[str, Any], column: str) -> Any:
        if column.startswith("reward/"):
            return row["reward_components"].get(column.removeprefix("reward/"))
        return row[column]

    return [[cell(row, column) for column in columns] for row in rows]
