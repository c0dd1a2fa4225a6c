"""The label-free benchmark: GRPO on the correctness reward against format-only and format-length.

After "Surrogate Signals from Format and Length" (Xin et al. 2025), on our scale: the default model
(SmolLM2-135M-Instruct) on 1- and 2-digit addition with the quickstart recipe (8 prompts x 4
samples, lr 2e-5, 64 new tokens, 2 solved examples), from configs/label_free.yaml, so every arm
has the same prompt: reason inside <think> </think>, then put the answer in \\boxed{}, with
examples in that format. Only the training reward differs:
- `correctness`: boxed_answer (1) + boxed_format (0.2), the quickstart's rewards; it reads the answers;
- `format`: surrogate_format alone (0.5 think block + 0.5 parsable boxed answer), label-free;
- `format_length`: the format-length score (format + the length curve of x = tokens / 64, peak at
  x = 0.5; only the length penalty without an answer), label-free.
In the label-free arms the training tasks reach the workers without their answers (env.label_free)
and the two training problems shown as examples are not trained on.

Budget, fixed before any run and the same for every arm: seeds 0 and 1; 20 steps; held-out greedy
accuracy on 32 tasks per distribution (64 in all) at steps 0, 5, 10, 15 and 20 (eval.every 5), scored
by boxed_answer for every arm; a checkpoint every 5 steps.

Resumable per (arm, seed): RUNS_DIR/<arm>-seed<k>/ holds that run; a finished one is not run again,
an interrupted one resumes from its checkpoint.

    python bench/label_free.py                                 # the whole grid (6 runs)
    python bench/label_free.py --only format_length:0          # some slots (arm, or arm:seed)
    python bench/label_free.py --report-only                   # tables, plot and the JSON from finished runs
    python bench/label_free.py --steps 2 --eval-every 1 --runs-dir /tmp/lf-smoke --only format:0   # the plumbing

It prints a line per run with elapsed time and ETA, the tables as markdown, writes
RUNS_DIR/label_free.png and ends with one JSON line: format-length's final held-out accuracy
against the correctness arm's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for bench.support

from bench.support.curriculum_report import Budget, finished_run, slot_dir  # noqa: E402
from bench.support.grid import run_grid, selected_slots  # noqa: E402
from bench.support.label_free_plots import plot_label_free  # noqa: E402
from bench.support.label_free_report import headline, markdown_tables, read_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO / "configs" / "label_free.yaml"
MIXTURE = ["add_1d", "add_2d"]
ARMS = {  # arm -> (env.label_free, training rewards)
    "correctness": (False, "[{name: boxed_answer, weight: 1.0}, {name: boxed_format, weight: 0.2}]"),
    "format": (True, "[{name: surrogate_format}]"),
    "format_length": (True, "[{name: format_length}]"),
}
SEEDS = (0, 1)


def train_overrides(arm: str, seed: int, budget: Budget, slot: Path) -> list[str]:
    label_free, rewards = ARMS[arm]
    return [
        f"run.name={arm}-s{seed}", f"run.output_dir={slot}", f"run.seed={seed}",
        f"env.sources.0.distributions=[{', '.join(budget.mixture)}]", f"env.test_size={budget.test_size}",
        f"env.label_free={'true' if label_free else 'false'}", f"rewards={rewards}",
        f"train.steps={budget.steps}", f"eval.every={budget.eval_every}",
        f"checkpoint.every={budget.eval_every}", "checkpoint.keep_last=1",
        "logging.wandb=disabled", "logging.progress=false",
    ]


def report(runs_dir: Path, budget: Budget, seeds: list[int]) -> dict:
    mixture = list(budget.mixture)
    by_arm = {}
    for arm in ARMS:
        runs = [(seed, finished_run(slot_dir(runs_dir, arm, seed), budget)) for seed in seeds]
        by_arm[arm] = [read_run(arm, seed, run, mixture, budget.steps) for seed, run in runs if run is not None]
    missing = [f"{arm}:{seed}" for arm in ARMS for seed in seeds if finished_run(slot_dir(runs_dir, arm, seed), budget) is None]
    print(f"\n## Label-free benchmark ({runs_dir})\n")
    if missing:
        print(f"Not finished yet (left out): {', '.join(missing)}\n")
    print(markdown_tables(by_arm, mixture, budget.steps))
    plot = plot_label_free(by_arm, runs_dir / "label_free.png")
    if plot:
        print(f"plot: {plot}")
    return headline(by_arm, budget.steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", default=str(REPO / "runs" / "label-free-bench"), help="where the (arm, seed) runs live")
    parser.add_argument("--only", action="append", default=[], metavar="ARM[:SEED]", help="run only these slots (repeatable)")
    parser.add_argument("--report-only", action="store_true", help="run nothing; report the finished runs")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds (default 0,1)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--test-size", type=int, default=32, help="held-out tasks per distribution")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra `rl train` override for new runs, e.g. rollout.num_workers=2 (give the same in every sitting)")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep finished runs' checkpoints (2.5 GiB each)")
    args = parser.parse_args()

    runs_dir = Path(args.runs_dir).resolve()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    budget = Budget(steps=args.steps, eval_every=args.eval_every, test_size=args.test_size, mixture=tuple(MIXTURE))

    def new_command(arm: str, seed: int, slot: Path) -> list[str]:
        return [sys.executable, "-m", "rl.cli", "train", str(BASE_CONFIG), *train_overrides(arm, seed, budget, slot), *args.set]

    if not args.report_only:
        run_grid(selected_slots(list(ARMS), args.only, seeds), budget, runs_dir, new_command, REPO, args.keep_checkpoints)
    figure = report(runs_dir, budget, seeds)  # format-length's final held-out accuracy against the correctness arm's
    print(json.dumps({"metric": figure["metric"], "value": figure["value"], "reference": figure["reference"],
                      "ratio": figure["ratio"], "unit": figure["unit"]}))


if __name__ == "__main__":
    main()
