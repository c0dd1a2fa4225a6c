"""UCB curriculum (DUMP) against uniform sampling: same model, seed, mixture and budget.

Trains the default model twice with `rl train` on a mixture of four arithmetic distributions
whose difficulty spans "mostly right at the start" to "out of reach" (add_1d, add_2d, add_3d,
mul_2d), once with `curriculum: ucb` and once `uniform`, and prints held-out greedy accuracy per
distribution for both (the layout of the DUMP paper's per-distribution figure). The figure is
mean held-out accuracy over the four distributions, UCB / uniform.

    python bench/curriculum.py [--steps 20] [--out runs/bench-curriculum]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIXTURE = ["add_1d", "add_2d", "add_3d", "mul_2d"]


def train(curriculum: str, steps: int, out: Path, seed: int) -> tuple[Path, float]:
    out.mkdir(parents=True, exist_ok=True)
    overrides = [
        f"run.name={curriculum}", f"run.output_dir={out}", f"run.seed={seed}", f"train.steps={steps}",
        f"env.sources=[{{type: arithmetic, distributions: [{', '.join(MIXTURE)}], few_shot: 2}}]",
        f"curriculum={curriculum}", "logging.wandb=disabled", "logging.progress=false", "eval.before=false",
    ]
    start = time.perf_counter()
    command = [sys.executable, "-m", "rl.cli", "train", str(REPO / "configs" / "quickstart.yaml"), *overrides]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{curriculum} run failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    (run_dir,) = sorted(out.glob(f"{curriculum}-*"))[-1:]
    return run_dir, time.perf_counter() - start


def samples_per_distribution(run_dir: Path) -> dict[str, int]:
    counts = dict.fromkeys(MIXTURE, 0)
    for line in (run_dir / "trained_samples.jsonl").read_text().splitlines():
        for task_id in json.loads(line)["task_ids"]:
            counts[task_id.split("/")[0]] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "runs" / "bench-curriculum"))
    args = parser.parse_args()

    results = {}
    for curriculum in ("ucb", "uniform"):
        run_dir, seconds = train(curriculum, args.steps, Path(args.out), args.seed)
        after = json.loads((run_dir / "eval_after.json").read_text())["distributions"]
        results[curriculum] = {"accuracy": {d: after[d]["accuracy"] for d in MIXTURE},
                               "samples": samples_per_distribution(run_dir), "seconds": seconds, "run_dir": str(run_dir)}
        print(f"{curriculum}: {seconds / 60:.1f} min, {run_dir}", flush=True)

    print(f"\nheld-out greedy accuracy after {args.steps} steps (samples trained on per distribution)")
    print(f"{'distribution':<14}{'ucb':>18}{'uniform':>18}")
    for d in MIXTURE:
        cells = [f"{100 * results[c]['accuracy'][d]:.1f}% ({results[c]['samples'][d]})" for c in ("ucb", "uniform")]
        print(f"{d:<14}{cells[0]:>18}{cells[1]:>18}")
    mean = {c: sum(results[c]["accuracy"].values()) / len(MIXTURE) for c in results}
    print(f"{'mean':<14}{100 * mean['ucb']:>17.1f}%{100 * mean['uniform']:>17.1f}%")
    print(json.dumps({"metric": "mean_heldout_accuracy_ucb_vs_uniform", "value": round(mean["ucb"], 4),
                      "reference": round(mean["uniform"], 4), "ratio": round(mean["ucb"] / max(mean["uniform"], 1e-9), 3),
                      "unit": "accuracy"}))


if __name__ == "__main__":
    main()
