"""Running a benchmark grid of (arm, seed) `rl train` runs that resumes where it stopped.

Each slot RUNS_DIR/<arm>-seed<k>/ holds one run (bench/support/curriculum_report.py finds them): a
finished run is not run again, an interrupted one with a checkpoint is resumed with `rl train
--resume`, anything else starts afresh from `new_command`. Output goes to SLOT/train.log and wall
time to SLOT/bench_time.json (summed over sittings). The arms and their configs are the caller's.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.support.curriculum_report import Budget, add_seconds, finished_run, read_seconds, resumable_run, slot_dir

NewCommand = Callable[[str, int, Path], list[str]]  # (arm, seed, slot) -> the `rl train` command of a fresh run


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{seconds / 60:.1f} min"


def selected_slots(arms: list[str], only: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """Every (arm, seed), seed-major (every arm has a seed before any has two), or those `--only` names."""
    slots = [(arm, seed) for seed in seeds for arm in arms]
    if not only:
        return slots
    chosen = []
    for item in only:
        arm, _, seed = item.partition(":")
        if arm not in arms or (seed and not seed.isdigit()):
            raise SystemExit(f"--only {item!r}: use ARM or ARM:SEED with ARM one of {arms}")
        matched = [s for s in slots if s[0] == arm and (not seed or s[1] == int(seed))]
        if not matched:
            raise SystemExit(f"--only {item!r}: seed {seed} is not among --seeds {','.join(map(str, seeds))}")
        chosen += [s for s in matched if s not in chosen]
    return chosen


def run_slot(arm: str, seed: int, budget: Budget, runs_dir: Path, new_command: NewCommand, repo: Path) -> tuple[str, float]:
    """Start or resume one (arm, seed) run; raises SystemExit with the log's tail if it did not finish."""
    slot = slot_dir(runs_dir, arm, seed)
    slot.mkdir(parents=True, exist_ok=True)
    resume = resumable_run(slot, budget)
    if resume is not None:
        command, how = [sys.executable, "-m", "rl.cli", "train", "--resume", str(resume)], f"resumed {resume.name}"
    else:
        command, how = new_command(arm, seed, slot), "started"
    start = time.perf_counter()
    with (slot / "train.log").open("a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        code = subprocess.run(command, cwd=repo, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    seconds = time.perf_counter() - start
    add_seconds(slot, seconds)
    if code != 0 or finished_run(slot, budget) is None:
        tail = (slot / "train.log").read_text()[-3000:]
        raise SystemExit(f"{arm} seed {seed}: `rl train` exited with {code} without a finished run; log {slot / 'train.log'}:\n"
                         f"{tail}\nfix the cause and run the bench again: finished runs are kept, this one resumes")
    return how, seconds


def run_grid(slots: list[tuple[str, int]], budget: Budget, runs_dir: Path, new_command: NewCommand, repo: Path,
             keep_checkpoints: bool = False) -> None:
    """Run the unfinished slots in order, a line per slot with its time and the grid's ETA."""
    start = time.perf_counter()
    todo = [s for s in slots if finished_run(slot_dir(runs_dir, *s), budget) is None]
    known = [t for t in (read_seconds(slot_dir(runs_dir, *s)) for s in slots if s not in todo) if t]
    print(f"[bench] {len(slots)} runs selected, {len(slots) - len(todo)} finished earlier, {len(todo)} to run "
          f"({budget.steps} steps, eval every {budget.eval_every} on {budget.test_size} tasks per distribution; "
          f"mixture {', '.join(budget.mixture)})", flush=True)
    done_now: list[float] = []
    for index, (arm, seed) in enumerate(slots, 1):
        slot = slot_dir(runs_dir, arm, seed)
        if (arm, seed) not in todo:
            print(f"[{index}/{len(slots)}] {arm} seed {seed}: finished earlier ({finished_run(slot, budget).name})", flush=True)
            continue
        how, seconds = run_slot(arm, seed, budget, runs_dir, new_command, repo)
        done_now.append(seconds)
        if not keep_checkpoints:  # the report needs metrics, evaluations and final/; a checkpoint is 2.5 GiB
            shutil.rmtree(finished_run(slot, budget) / "checkpoints", ignore_errors=True)
        per_run = sum(done_now + known) / len(done_now + known)
        left = len(todo) - len(done_now)
        print(f"[{index}/{len(slots)}] {arm} seed {seed}: {how}, finished in {clock(seconds)} | elapsed "
              f"{clock(time.perf_counter() - start)} | ETA {clock(per_run * left) if left else 'done'}", flush=True)
