"""Held-out evaluation results: per-distribution summaries and the before/after table."""

from __future__ import annotations

import io
from collections import defaultdict

from rich.console import Console
from rich.table import Table

from rewards.registry import accuracy_of


def summarize_eval(metas, components) -> dict:
    """Accuracy, mean reward, mean length and truncated share, per distribution and overall."""
    by_dist = defaultdict(list)
    for meta in metas:
        by_dist[meta.distribution].append(meta)
    groups = {**dict(sorted(by_dist.items())), "overall": list(metas)}
    result: dict = {"accuracy": {}, "reward_mean": {}, "response_len_mean": {}, "truncated_frac": {}, "count": {}}
    for name, group in groups.items():
        result["accuracy"][name] = accuracy_of(group, components)
        result["reward_mean"][name] = sum(m.reward for m in group) / len(group)
        result["response_len_mean"][name] = sum(m.completion_len for m in group) / len(group)
        result["truncated_frac"][name] = sum(m.finish_reason == "length" for m in group) / len(group)
        result["count"][name] = len(group)
    result["examples"] = [{"distribution": m.distribution, "text": m.text} for m in list(metas)[:3]]
    return result


def evaluation_table(before: dict | None, after: dict | None) -> str:
    """A terminal table of greedy held-out accuracy before and after training."""
    table = Table(title="held-out greedy accuracy")
    table.add_column("distribution")
    table.add_column("n", justify="right")
    if before:
        table.add_column("before", justify="right")
    if after:
        table.add_column("after", justify="right")
    reference = after or before
    for name in reference["accuracy"]:
        row = [name, str(reference["count"][name])]
        for result in (before, after):
            if result:
                value = result["accuracy"].get(name)
                row.append("-" if value is None else f"{100 * value:.1f}%")
        table.add_row(*row)
    buffer = io.StringIO()
    Console(file=buffer, width=100, force_terminal=False).print(table)
    return buffer.getvalue()
