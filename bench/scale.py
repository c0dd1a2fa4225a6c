"""Scale-out: rollout throughput with 1 and 2 rollout workers, at an equal number of steps.

Runs `rl train configs/quickstart.yaml` (SmolLM2-135M-Instruct, 8 prompts x 4 samples per step, up
to 64 new tokens, seed 0) twice as a subprocess: `rollout.num_workers=1`, then `=2`, each for
`--steps` steps (default 6), without evaluation or W&B. `rollout.cpu_threads` keeps its default:
on a CPU-only machine `rl train` gives each local worker an even share of the cores (one worker
gets them all).

Training is synchronous: the learner waits while the workers generate a step's samples, and
`rollout/seconds` in RUN/metrics.jsonl is that wait (tasks sent to all samples back and scored).
A run's throughput is sum(samples) / sum(rollout/seconds) over its steps, where a step's samples
are those in RUN/trained_samples.jsonl plus any dropped as stale. The first step is left out as
warm-up (vLLM's first batches are slower); a run therefore needs at least 2 steps.

value:     rollout samples/s with 2 workers
reference: rollout samples/s with 1 worker, same steps and seed
ratio:     value / reference; 2.0 would be perfect scaling
Also printed: each run's generated tokens/s and its total wall time (start-up of the learner and
the workers, all steps, saving the final model).

    python bench/scale.py [--steps 6] [--output-dir DIR]

Without --output-dir the runs go to a temporary folder, which is deleted when both runs succeed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_training(workers: int, steps: int, out: Path) -> tuple[Path, float]:
    """One `rl train` run; prints a line per finished step. Returns the run folder and the wall time."""
    name = f"workers-{workers}"
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    overrides = [
        f"run.name={name}", f"run.output_dir={folder}", f"rollout.num_workers={workers}", f"train.steps={steps}",
        "eval.before=false", "eval.after=false", "logging.wandb=disabled", "logging.progress=false",
    ]
    command = [sys.executable, "-m", "rl.cli", "train", str(REPO / "configs" / "quickstart.yaml"), *overrides]
    existing = {p for p in folder.iterdir() if p.is_dir()}
    log_path = out / f"{name}.log"
    print(f"{name}: rl train ... {' '.join(overrides)} (log: {log_path})", flush=True)
    start = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            reported = 0
            while proc.poll() is None:
                time.sleep(2)
                new = [p for p in folder.iterdir() if p.is_dir() and p not in existing]
                for record in (read_metrics(new[0]) if len(new) == 1 else [])[reported:]:
                    print(f"  {name}: step {record['step']}/{steps}: rollout {record['rollout/seconds']:.1f} s, "
                          f"step {record['time/step_seconds']:.1f} s", flush=True)
                    reported += 1
        except BaseException:
            proc.terminate()  # `rl train` stops its learner and workers on SIGTERM
            proc.wait(timeout=120)
            raise
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name}: rl train exited with code {proc.returncode}; the end of {log_path}:\n"
                         f"{log_path.read_text()[-4000:]}")
    run_dirs = [p for p in folder.iterdir() if p.is_dir() and p not in existing]
    if len(run_dirs) != 1:
        raise SystemExit(f"{name}: expected one new run folder in {folder}, found {run_dirs}")
    print(f"{name}: done in {seconds / 60:.1f} min ({run_dirs[0]})", flush=True)
    return run_dirs[0], seconds


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line still being written
            break
    return records


def throughput(run_dir: Path) -> dict[str, float]:
    """Samples/s and tokens/s of generation over every step but the first."""
    metrics = {r["step"]: r for r in read_metrics(run_dir)}
    audit = {a["step"]: a for a in map(json.loads, (run_dir / "trained_samples.jsonl").read_text().splitlines())}
    steps = sorted(metrics)[1:]
    if not steps:
        raise SystemExit(f"{run_dir}: need at least 2 steps (the first is warm-up)")
    samples = [len(audit[s]["sample_ids"]) + metrics[s].get("rollout/dropped_stale", 0) for s in steps]
    seconds = sum(metrics[s]["rollout/seconds"] for s in steps)
    tokens = sum(metrics[s]["rollout/response_len_mean"] * len(audit[s]["sample_ids"]) for s in steps)
    return {"samples": sum(samples), "rollout_seconds": seconds, "samples_per_s": sum(samples) / seconds,
            "tokens_per_s": tokens / seconds, "steps": len(steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="training steps per run (the first is warm-up)")
    parser.add_argument("--output-dir", default=None, help="where the two runs go (default: a temporary folder)")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is warm-up")
    temporary = args.output_dir is None
    out = Path(tempfile.mkdtemp(prefix="rl-bench-scale-")) if temporary else Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)

    results = {}
    for workers in (1, 2):
        run_dir, wall = run_training(workers, args.steps, out)
        results[workers] = {**throughput(run_dir), "wall_seconds": wall}

    print(f"\nrollout throughput over steps 2-{args.steps} (step 1 is warm-up)")
    print(f"{'workers':<9}{'samples':>9}{'rollout s':>11}{'samples/s':>11}{'tokens/s':>10}{'wall time':>11}")
    for workers, r in results.items():
        print(f"{workers:<9}{r['samples']:>9}{r['rollout_seconds']:>11.1f}{r['samples_per_s']:>11.2f}"
              f"{r['tokens_per_s']:>10.1f}{r['wall_seconds'] / 60:>9.1f} m")
    if temporary:
        shutil.rmtree(out, ignore_errors=True)
    value, reference = results[2]["samples_per_s"], results[1]["samples_per_s"]
    print(json.dumps({"metric": "rollout_samples_per_s_2_workers", "value": round(value, 3), "reference": round(reference, 3),
                      "ratio": round(value / reference, 3), "unit": "samples/s"}))


if __name__ == "__main__":
    main()
