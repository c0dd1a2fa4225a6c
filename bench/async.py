"""Asynchronous against synchronous training: same quickstart configuration, seed and number of steps.

Trains the default model twice with `rl train configs/quickstart.yaml`, once with `rollout.async=false`
(generate, then train, strictly on-policy) and once with `rollout.async=true` (the next step's samples
are generated while this step trains; truncated importance sampling corrects the one-version lag).
Held-out evaluation is off in both, so the wall times compare the training loops alone.

value:     wall time of the asynchronous run's steps (sum of time/step_seconds)
reference: the same for the synchronous run
ratio:     value / reference (below 1: asynchronous is faster)

It also prints both runs' total process wall time, their reward per step, and writes the two
learning curves (rollout reward and accuracy per step) to docs/async_curves.png.

    python bench/async.py [--steps 20] [--out runs/bench-async]

On a 2-core CPU the worker's vLLM and the learner's DeepSpeed compete for the same two cores, so
overlap can only hide the part of either that leaves a core idle; on a GPU machine (generation
and training on different devices) the two proceed truly in parallel.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train(mode: str, steps: int, out: Path, seed: int) -> tuple[Path, float]:
    out.mkdir(parents=True, exist_ok=True)
    overrides = [
        f"run.name={mode}", f"run.output_dir={out}", f"run.seed={seed}", f"train.steps={steps}",
        f"rollout.async={'true' if mode == 'async' else 'false'}",
        "logging.wandb=disabled", "logging.progress=false", "eval.before=false", "eval.after=false",
    ]
    start = time.perf_counter()
    command = [sys.executable, "-m", "rl.cli", "train", str(REPO / "configs" / "quickstart.yaml"), *overrides]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    (run_dir,) = sorted(out.glob(f"{mode}-*"))[-1:]
    return run_dir, time.perf_counter() - start


def plot(curves: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for mode, records in curves.items():
        steps = [r["step"] for r in records]
        axes[0].plot(steps, [r["rollout/reward_mean"] for r in records], marker="o", markersize=3, label=mode)
        axes[1].plot(steps, [r["rollout/accuracy"] for r in records], marker="o", markersize=3, label=mode)
    axes[0].set(title="rollout reward per step", xlabel="step", ylabel="mean reward")
    axes[1].set(title="rollout accuracy per step", xlabel="step", ylabel="accuracy")
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "runs" / "bench-async"))
    parser.add_argument("--plot", default=str(REPO / "docs" / "async_curves.png"))
    args = parser.parse_args()

    curves, loop_seconds, process_seconds = {}, {}, {}
    for mode in ("sync", "async"):
        print(f"{mode}: training {args.steps} steps ...", flush=True)
        run_dir, seconds = train(mode, args.steps, Path(args.out), args.seed)
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        curves[mode], process_seconds[mode] = records, seconds
        loop_seconds[mode] = sum(r["time/step_seconds"] for r in records)
        print(f"{mode}: steps {loop_seconds[mode]:.1f} s, whole process {seconds:.1f} s, {run_dir}", flush=True)

    print(f"\nreward per step (rollout/reward_mean), {args.steps} steps, seed {args.seed}")
    print(f"{'step':>5}{'sync':>10}{'async':>10}")
    for sync, async_ in zip(curves["sync"], curves["async"]):
        print(f"{sync['step']:>5}{sync['rollout/reward_mean']:>10.3f}{async_['rollout/reward_mean']:>10.3f}")
    for mode in curves:
        last = curves[mode][-5:]
        print(f"{mode}: mean reward over the last {len(last)} steps {sum(r['rollout/reward_mean'] for r in last) / len(last):.3f}")
    plot(curves, Path(args.plot))
    print(f"learning curves: {args.plot}")
    print(json.dumps({"metric": "train_loop_seconds_async_vs_sync", "value": round(loop_seconds["async"], 2),
                      "reference": round(loop_seconds["sync"], 2),
                      "ratio": round(loop_seconds["async"] / loop_seconds["sync"], 3), "unit": "s"}))


if __name__ == "__main__":
    main()
