"""Held-out evaluation: per-distribution summaries (mean@k, pass@k, reward, length, truncation) and tables.

One summary serves `rl eval` and the evaluations inside `rl train` (before, every `eval.every`
steps, after). k is the number of samples per task: mean@k is the share of correct samples, pass@k
the share of tasks with a correct sample, computed with the unbiased estimator of Chen et al.
(2021), 1 - C(n-c, k) / C(n, k), which with n = k samples is simply "any correct".
"""

from __future__ import annotations

import io
import re
from collections import defaultdict
from math import comb

from rich.console import Console
from rich.table import Table

from rewards.registry import accuracy_of
from rl.config import Config
from rl.wire import SamplingParams

OVERALL = "overall"


def eval_sampling(config: Config) -> SamplingParams:
    """How held-out tasks are sampled, in `rl train` and `rl eval` alike: k = eval.samples."""
    e = config.eval
    return SamplingParams(
        n=e.samples, temperature=e.temperature, top_p=e.top_p, max_tokens=e.max_new_tokens or config.rollout.max_new_tokens,
        seed=config.run.seed if e.temperature > 0 else None,
    )


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them correct) is correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def summarize_group(metas: list, k: int) -> dict:
    by_task: dict[str, list] = defaultdict(list)
    for meta in metas:
        by_task[meta.task_id].append(meta)
    judged = [samples for samples in by_task.values() if all(m.correct is not None for m in samples)]
    pass_k = (
        sum(pass_at_k(len(s), sum(m.correct for m in s), min(k, len(s))) for s in judged) / len(judged) if judged else None
    )
    return {
        "tasks": len(by_task),
        "samples": len(metas),
        "accuracy": accuracy_of(metas),  # mean@k
        "pass_at_k": pass_k,
        "reward_mean": sum(m.reward for m in metas) / len(metas),
        "response_len_mean": sum(m.completion_len for m in metas) / len(metas),
        "truncated_frac": sum(m.finish_reason == "length" for m in metas) / len(metas),
    }


def natural_key(name: str) -> list:
    """kk_3p < kk_10p: digit runs compare as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def summarize_eval(metas: list, k: int = 1) -> dict:
    """Per distribution (in natural order: add_1d, add_2d, kk_3p ... kk_14p) and overall; a few completions to read."""
    by_dist: dict[str, list] = defaultdict(list)
    for meta in metas:
        by_dist[meta.distribution].append(meta)
    groups = {**{name: by_dist[name] for name in sorted(by_dist, key=natural_key)}, OVERALL: list(metas)}
    return {
        "k": k,
        "distributions": {name: summarize_group(group, k) for name, group in groups.items()},
        "examples": [{"distribution": m.distribution, "task_id": m.task_id, "text": m.text} for m in list(metas)[:3]],
    }


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def render(table: Table) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=120, force_terminal=False).print(table)
    return buffer.getvalue()


def evaluation_table(result: dict, title: str = "held-out evaluation") -> str:
    """Every metric of one evaluation, a row per distribution and one overall."""
    k = result["k"]
    table = Table(title=title)
    for column in ("distribution", "tasks", f"mean@{k}", f"pass@{k}", "reward", "length", "truncated"):
        table.add_column(column, justify="left" if column == "distribution" else "right")
    for name, row in result["distributions"].items():
        table.add_row(
            name, str(row["tasks"]), percent(row["accuracy"]), percent(row["pass_at_k"]),
            f"{row['reward_mean']:.3f}", f"{row['response_len_mean']:.1f}", percent(row["truncated_frac"]),
            end_section=name == list(result["distributions"])[-2] if len(result["distributions"]) > 1 else False,
        )
    return render(table)


def comparison_table(before: dict | None, after: dict | None) -> str:
    """mean@k before and after training, per distribution."""
    reference = after or before
    k = reference["k"]
    table = Table(title=f"held-out accuracy (mean@{k})")
    table.add_column("distribution")
    table.add_column("tasks", justify="right")
    for label, result in (("before", before), ("after", after)):
        if result:
            table.add_column(label, justify="right")
    for name, row in reference["distributions"].items():
        cells = [name, str(row["tasks"])]
        for result in (before, after):
            if result:
                cells.append(percent(result["distributions"].get(name, {}).get("accuracy")))
        table.add_row(*cells)
    return render(table)


def flat_metrics(result: dict, prefix: str = "eval") -> dict[str, float]:
    """eval/<dist>/<metric> scalars for metrics.jsonl and W&B."""
    out = {}
    for name, row in result["distributions"].items():
        for key in ("accuracy", "pass_at_k", "reward_mean", "response_len_mean", "truncated_frac"):
            if row[key] is not None:
                out[f"{prefix}/{name}/{key}"] = row[key]
    return out
