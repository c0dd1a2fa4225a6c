"""Read an offline W&B run back with wandb's own reader (`wandb leet inspect --json`, the
transaction-log inspector that ships with wandb 0.31), and compare it with metrics.jsonl."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

WANDB_CLI = [sys.executable, "-m", "wandb"]


def offline_run_folder(wandb_dir: Path, run_id: str) -> Path:
    (folder,) = wandb_dir.glob(f"offline-run-*-{run_id}")
    return folder


def wandb_records(run_folder: Path) -> list[dict[str, Any]]:
    """Every record of the run's .wandb file, as wandb's inspector prints them."""
    (log_file,) = run_folder.glob("run-*.wandb")
    done = subprocess.run([*WANDB_CLI, "leet", "inspect", "--json", str(log_file)], capture_output=True, text=True,
                          timeout=120, cwd=run_folder)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def history_items(run_folder: Path) -> list[dict[str, Any]]:
    """Each logged step's row as the .wandb file holds it (a media value such as a table flattened to `KEY.field`s)."""
    return [record["history"]["item"] for record in wandb_records(run_folder) if record.get("type") == "history"]


def media_keys(item: dict[str, Any]) -> set[str]:
    """The keys of a history row that hold media (tables, images): those with a `KEY._type` field."""
    return {k.removesuffix("._type") for k in item if k.endswith("._type")}


def wandb_history(run_folder: Path) -> list[dict[str, Any]]:
    """The run's logged steps: {"step": N, **metrics}, W&B's own keys (_step, _runtime, ...) and media left out."""
    rows = []
    for item in history_items(run_folder):
        media = media_keys(item)
        rows.append({"step": item["_step"], **{k: v for k, v in item.items()
                                               if not k.startswith("_") and k.split(".", 1)[0] not in media}})
    return rows


def wandb_tables(run_folder: Path, key: str) -> dict[int, dict[str, Any]]:
    """Step -> the table logged under `key` that step ({"columns": [...], "data": [[...], ...]}), read from the
    file the history row points at (files/media/table/...)."""
    tables = {}
    for item in history_items(run_folder):
        if item.get(f"{key}._type") == "table-file":
            tables[item["_step"]] = json.loads((run_folder / "files" / item[f"{key}.path"]).read_text())
    return tables


def wandb_run_record(run_folder: Path) -> dict[str, Any]:
    """The run record: id, display name, group, and the config (under config.update)."""
    return next(r["run"] for r in wandb_records(run_folder) if r.get("type") == "run")


def metrics_rows(metrics_path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl as W&B should hold it: the step and the metrics, without the wall-clock time."""
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}  # how W&B's JSON spells them


def same_value(a: Any, b: Any) -> bool:
    a, b = (NON_FINITE.get(v, v) if isinstance(v, str) else v for v in (a, b))
    nan = lambda v: isinstance(v, float) and math.isnan(v)
    if nan(a) or nan(b):
        return nan(a) and nan(b)
    return a == b


def differences(expected: list[dict[str, Any]], got: list[dict[str, Any]]) -> list[str]:
    """What differs between two step-by-step histories (empty when they are the same)."""
    problems = []
    if [r["step"] for r in expected] != [r["step"] for r in got]:
        return [f"steps differ: expected {[r['step'] for r in expected]}, W&B has {[r['step'] for r in got]}"]
    for want, have in zip(expected, got):
        if set(want) != set(have):
            problems.append(f"step {want['step']}: keys differ: {sorted(set(want) ^ set(have))}")
        problems += [f"step {want['step']}: {k} is {have.get(k)!r}, expected {v!r}" for k, v in want.items()
                     if k in have and not same_value(v, have[k])]
    return problems
