"""Held-out evaluation from the learner: before training, every `eval.every` steps, after training.

It runs on the workers like training rollouts, but never feeds the curriculum.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from envs.source import TaskSource
from learner.lead_run import LeadRun
from rl.config import Config
from rl.console import say
from rl.coordinator import Coordinator
from rl.evaluation import (
    comparison_table,
    eval_sampling,
    evaluation_table,
    flat_metrics,
    summarize_eval,
)


def evaluate(coordinator: Coordinator, source: TaskSource, config: Config, version: int, path: Path) -> dict:
    """mean@k, pass@k, reward, length and truncation on the held-out split. Never feeds the curriculum."""
    start = time.perf_counter()
    trajectories = coordinator.run_tasks(source.held_out(), eval_sampling(config), "eval", min_version=version)
    result = summarize_eval([t.meta for t in trajectories], config.eval.samples)
    result["policy_version"] = version
    result["seconds"] = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return result


def evaluate_before(rank0: LeadRun) -> dict | None:
    """The starting policy (eval.before; not again on resume)."""
    if rank0.config.eval.before and rank0.progress.last_step == 0:
        return evaluate(rank0.coordinator, rank0.source, rank0.config, rank0.progress.version, rank0.run_dir / "eval_before.json")
    return None


def evaluate_during(rank0: LeadRun, step: int) -> dict[str, float]:
    """Every eval.every steps (the last step excepted: eval.after covers it): the metrics to log, else none."""
    config = rank0.config
    if not (config.eval.every and step % config.eval.every == 0 and step < config.train.steps):
        return {}
    result = evaluate(rank0.coordinator, rank0.source, config, rank0.progress.version,
                      rank0.run_dir / "eval" / f"step-{step:06d}.json")
    say(evaluation_table(result, f"held-out evaluation at step {step}"))
    return flat_metrics(result)


def evaluate_after(rank0: LeadRun, before: dict | None) -> None:
    """The trained policy (eval.after), and how it compares with the starting one."""
    config = rank0.config
    after = None
    if config.eval.after:
        after = evaluate(rank0.coordinator, rank0.source, config, rank0.progress.version, rank0.run_dir / "eval_after.json")
    if after:
        say(evaluation_table(after, "held-out evaluation after training"))
        rank0.monitor.summary(flat_metrics(after, "eval/after"))
    if before or after:
        say(comparison_table(before, after))
