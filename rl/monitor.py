"""Where metrics go: RUN/metrics.jsonl (always), W&B (online with a key, offline otherwise),
a progress bar, and PNG plots of the curves at the end of a run. Sampled completions go to
RUN/completions.jsonl and, some whole groups of them, to a W&B table `completions` (rl.completions_table).

Metrics are computed elsewhere and handed in as flat dicts with namespaced keys.

W&B after a resume: every start of a run folder is a new W&B run, in the group named after the
folder and with the folder's name. A resumed start first replays RUN/metrics.jsonl (already cut
back to the checkpoint's step) into its new W&B run, so that run holds every step once, with the
values metrics.jsonl has, and the completions tables of the steps completions.jsonl holds. Re-logging into the old run cannot work: W&B ignores steps that do not
increase, and an offline run that was killed never wrote its last unflushed steps.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rl.completions_table import table_columns, table_data, table_rows
from rl.config import Config, completions_table_rows
from rl.console import console, say

COMPLETIONS_FILE = "completions.jsonl"


class Monitor:
    def __init__(self, config: Config, run_dir: Path, total_steps: int, initial_step: int = 0,
                 resumed_from: str | None = None):
        """`initial_step` > 0: a resume after that step's checkpoint; `resumed_from`: the W&B run id it recorded."""
        self.run_dir = run_dir
        metrics_path = run_dir / "metrics.jsonl"
        # a resumed run plots its earlier steps too, and replays them into its W&B run
        self.history: list[dict[str, Any]] = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()] \
            if metrics_path.is_file() else []
        self.metrics_file = metrics_path.open("a")
        self.completions_file = (run_dir / COMPLETIONS_FILE).open("a")
        self.table_limit = completions_table_rows(config)
        resumed = {"resumed_from": resumed_from, "resumed_at_step": initial_step} if initial_step > 0 else {}
        self.wandb_run = start_wandb(config, run_dir, resumed)
        if self.wandb_run is not None:
            replay(self.wandb_run, self.history, completions_by_step(run_dir / COMPLETIONS_FILE), self.table_limit)
        self.progress = tqdm(total=total_steps, initial=initial_step, desc="train", unit="step",
                             disable=not config.logging.progress, dynamic_ncols=True, file=console(err=True))

    @property
    def wandb_id(self) -> str | None:
        return self.wandb_run.id if self.wandb_run is not None else None

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, "time": round(time.time(), 3), **metrics}
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        self.history.append(record)
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)

    def log_completions(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Every row to completions.jsonl; whole groups of them (logging.completions_per_step rows) to W&B's table.
        Called before the step's metrics line: W&B merges the table into that step's row."""
        self.completions_file.write("".join(json.dumps(row) + "\n" for row in rows))
        self.completions_file.flush()
        table = completions_table(rows, self.table_limit) if self.wandb_run is not None else None
        if table is not None:
            self.wandb_run.log({"completions": table}, step=step, commit=False)

    def advance(self, metrics: dict[str, Any]) -> None:
        shown = {"reward": metrics.get("rollout/reward_mean"), "acc": metrics.get("rollout/accuracy")}
        self.progress.set_postfix({k: f"{v:.3f}" for k, v in shown.items() if v is not None})
        self.progress.update(1)

    def summary(self, values: dict[str, Any]) -> None:
        if self.wandb_run is not None:
            for key, value in values.items():
                self.wandb_run.summary[key] = value

    def close(self) -> None:
        self.progress.close()
        self.metrics_file.close()
        self.completions_file.close()
        plot_curves(self.history, self.run_dir / "curves.png")
        plot_curriculum(self.history, self.run_dir / "curriculum.png")
        if self.wandb_run is not None:
            offline = self.wandb_run.settings.mode == "offline"
            run_path = Path(self.wandb_run.dir).parent
            self.wandb_run.finish()
            if offline:
                say(f"[rl] W&B ran offline; upload with: wandb sync {run_path}")


def truncate_after(path: Path, last_step: int) -> None:
    """Drop the lines of steps after the checkpoint (the resumed run writes them again), and a line
    cut short by a killed learner."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if (step := line_step(line)) is not None and step <= last_step]
    path.write_text("".join(line + "\n" for line in kept))


def line_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):  # empty, torn, or not a step's line
        return None


def start_wandb(config: Config, run_dir: Path, resumed: dict[str, Any]):
    """A new W&B run for this start of `run_dir`; `resumed` (resumed_from, resumed_at_step) goes into its config."""
    mode = config.logging.wandb
    if mode == "disabled":
        return None
    if mode == "auto":
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    import wandb

    return wandb.init(
        project=config.logging.project,
        name=run_dir.name,
        group=run_dir.name,  # a resumed start is a new W&B run in the same group
        dir=str(run_dir),
        mode=mode,
        config={**config.model_dump(mode="json"), **resumed},
        settings=wandb.Settings(console="off", silent=True),
    )


def replay(wandb_run, history: list[dict[str, Any]], completions: dict[int, list[dict[str, Any]]], limit: int) -> None:
    """Log the steps metrics.jsonl already holds (a resume: those up to the checkpoint) into a new W&B run,
    with the completions tables of those steps."""
    for record in history:
        metrics = {k: v for k, v in record.items() if k not in ("step", "time")}
        table = completions_table(completions.get(record["step"], []), limit)
        wandb_run.log({**metrics, **({"completions": table} if table is not None else {})}, step=record["step"])


def completions_table(rows: list[dict[str, Any]], limit: int):
    """The W&B table of whole groups of `rows` (at most `limit` rows); None when it would be empty."""
    shown = table_rows(rows, limit)
    if not shown:
        return None
    import wandb

    columns = table_columns(shown)
    return wandb.Table(columns=columns, data=table_data(shown, columns))


def completions_by_step(path: Path) -> dict[int, list[dict[str, Any]]]:
    """completions.jsonl's rows by step (a torn last line, from a killed learner, left out)."""
    steps: dict[int, list[dict[str, Any]]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            steps.setdefault(row["step"], []).append(row)
    return steps


PLOTTED = [
    ("rollout/reward_mean", "reward (mean)"),
    ("rollout/accuracy", "rollout accuracy"),
    ("rollout/response_len_mean", "response length (tokens)"),
    ("train/kl", "KL to reference"),
]


def plot_curriculum(history: list[dict[str, Any]], path: Path) -> None:
    """Sampling probability of every distribution per step (left) and its window mean |A| (right),
    so a user sees the curriculum move from easy to hard distributions."""
    names = sorted({key.split("/")[1] for record in history for key in record
                    if key.startswith("curriculum/") and key.endswith("/probability")})
    if not names:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name in names:
        for ax, metric in ((left, "probability"), (right, "mean_abs_advantage")):
            points = [(r["step"], r[f"curriculum/{name}/{metric}"]) for r in history if f"curriculum/{name}/{metric}" in r]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=2, label=name)
    left.set_title("sampling probability")
    right.set_title("mean |advantage| (window)")
    for ax in (left, right):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    left.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Reward, accuracy and length per step in one PNG; people read curves faster than logs."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [(key, label) for key, label in PLOTTED if any(r.get(key) for r in history)]  # all-zero curves say nothing
    fig, axes = plt.subplots(1, len(present), figsize=(4 * len(present), 3.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], present):
        points = [(r["step"], r[key]) for r in history if key in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
