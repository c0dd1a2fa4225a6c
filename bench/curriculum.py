"""The curriculum benchmark: uniform against UCB (DUMP) against UCB on correctness alone, over seeds.

The default model (SmolLM2-135M-Instruct, the quickstart recipe: 2 solved examples, 8 prompts x 4
samples, lr 2e-5, 64 new tokens) trains on a mixture of arithmetic distributions that differ in
learnability for it. The mixture was checked with `rl eval` on the base model (greedy, 32 tasks
each; docs/benchmarks.md, "Curriculum benchmark: the mixture") and with earlier training runs:
- add_1d: 28% at the start, 81-94% after the quickstart's 20 steps: solved within a few steps;
- add_2d: 0% at the start, 34-59% after 20 steps: learned in tens of steps;
- add_3d: 0% at the start, 12.5% after 20 steps at a quarter of the prompts: learned slowly;
- mul_3d: 0% at the start (products of up to six digits), out of reach. Every greedy answer is
  boxed (reward 0.2); sampled at temperature 1 the format can vary inside a group of wrong answers,
  the case `signal: correctness` is for.

Arms, fixed before any run: `uniform`; `ucb` with DUMP's defaults (window 300, c 1, temperature
0.1, signal: reward); `ucb_correctness`, the same with `signal: correctness`. Budget, the same for
every arm: seeds 0, 1, 2; 30 steps; held-out greedy accuracy of every distribution on 16 tasks at
steps 0, 10, 20 and 30 (eval.every 10). A checkpoint every 10 steps.

Resumable per (arm, seed): RUNS_DIR/<arm>-seed<k>/ holds that run; a finished one is not run again,
an interrupted one resumes from its checkpoint, so the grid can be run over several sittings.

    python bench/curriculum.py                              # the whole grid (hours on a 2-core CPU)
    python bench/curriculum.py --only ucb:0 --only uniform  # some slots (arm, or arm:seed)
    python bench/curriculum.py --report-only                # tables, plots and the JSON from finished runs
    python bench/curriculum.py --steps 2 --eval-every 1 --runs-dir /tmp/smoke   # the plumbing, in minutes

It prints a line per run with elapsed time and ETA, the tables as markdown, writes
RUNS_DIR/curriculum_accuracy.png and curriculum_probabilities.png, and ends with one JSON line:
UCB's area under the mean-accuracy curve against uniform's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for bench.support

from bench.support import grid  # noqa: E402
from bench.support.curriculum_plots import plot_accuracy, plot_probabilities  # noqa: E402
from bench.support.curriculum_report import (  # noqa: E402
    Budget,
    finished_run,
    headline,
    markdown_tables,
    read_run,
    slot_dir,
    summarize_arm,
)

REPO = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO / "configs" / "quickstart.yaml"
MIXTURE = ["add_1d", "add_2d", "add_3d", "mul_3d"]
ARMS = {"uniform": "uniform", "ucb": "ucb", "ucb_correctness": "{ucb: {signal: correctness}}"}
SEEDS = (0, 1, 2)


def train_overrides(arm: str, seed: int, budget: Budget, slot: Path, mixture: list[str]) -> list[str]:
    return [
        f"run.name={arm}-s{seed}", f"run.output_dir={slot}", f"run.seed={seed}",
        f"env.sources.0.distributions=[{', '.join(mixture)}]", f"env.test_size={budget.test_size}",
        f"train.steps={budget.steps}", f"eval.every={budget.eval_every}", f"curriculum={ARMS[arm]}",
        f"checkpoint.every={budget.eval_every}", "checkpoint.keep_last=1",
        "logging.wandb=disabled", "logging.progress=false",
    ]


def new_command(arm: str, seed: int, slot: Path, budget: Budget, mixture: list[str], extra: list[str]) -> list[str]:
    """The `rl train` command of a fresh (arm, seed) run."""
    return [sys.executable, "-m", "rl.cli", "train", str(BASE_CONFIG), *train_overrides(arm, seed, budget, slot, mixture), *extra]


def selected_slots(only: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    return grid.selected_slots(list(ARMS), only, seeds)


def run_grid(slots: list[tuple[str, int]], budget: Budget, runs_dir: Path, mixture: list[str], extra: list[str],
             keep_checkpoints: bool) -> None:
    """The unfinished slots, one `rl train` each (bench/support/grid.py); output in SLOT/train.log."""
    grid.run_grid(slots, budget, runs_dir, lambda arm, seed, slot: new_command(arm, seed, slot, budget, mixture, extra),
                  REPO, keep_checkpoints)


def report(runs_dir: Path, budget: Budget, mixture: list[str], seeds: list[int]) -> dict:
    summaries = {}
    for arm in ARMS:
        runs = []
        for seed in seeds:
            run = finished_run(slot_dir(runs_dir, arm, seed), budget)
            if run is not None:
                runs.append(read_run(arm, seed, run, mixture, budget.steps))
        if runs:
            summaries[arm] = summarize_arm(arm, runs, mixture, budget.steps)
    missing = [f"{arm}:{seed}" for arm in ARMS for seed in seeds
               if finished_run(slot_dir(runs_dir, arm, seed), budget) is None]
    print(f"\n## Curriculum benchmark ({runs_dir})\n")
    if missing:
        print(f"Not finished yet (left out): {', '.join(missing)}\n")
    print(markdown_tables(list(summaries.values()), mixture))
    if summaries:
        print(f"plot: {plot_accuracy(list(summaries.values()), mixture, runs_dir / 'curriculum_accuracy.png')}")
        probabilities = plot_probabilities(list(summaries.values()), mixture, runs_dir / "curriculum_probabilities.png")
        if probabilities:
            print(f"plot: {probabilities}")
    return headline(summaries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", default=str(REPO / "runs" / "curriculum-bench"), help="where the (arm, seed) runs live")
    parser.add_argument("--only", action="append", default=[], metavar="ARM[:SEED]", help="run only these slots (repeatable)")
    parser.add_argument("--report-only", action="store_true", help="run nothing; report the finished runs")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--test-size", type=int, default=16, help="held-out tasks per distribution")
    parser.add_argument("--mixture", default=",".join(MIXTURE), help="comma-separated arithmetic distributions")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra `rl train` override for new runs, e.g. rollout.num_workers=2 (give the same in every sitting)")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep finished runs' checkpoints (2.5 GiB each)")
    args = parser.parse_args()

    runs_dir = Path(args.runs_dir).resolve()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    mixture = [d.strip() for d in args.mixture.split(",") if d.strip()]
    budget = Budget(steps=args.steps, eval_every=args.eval_every, test_size=args.test_size, mixture=tuple(mixture))
    if not args.report_only:
        run_grid(selected_slots(args.only, seeds), budget, runs_dir, mixture, args.set, args.keep_checkpoints)
    figure = report(runs_dir, budget, mixture, seeds)  # UCB's area under the accuracy curve against uniform's
    print(json.dumps({"metric": figure["metric"], "value": figure["value"], "reference": figure["reference"],
                      "ratio": figure["ratio"], "unit": figure["unit"]}))


if __name__ == "__main__":
    main()
