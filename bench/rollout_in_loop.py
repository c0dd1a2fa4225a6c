"""Generation speed inside the training loop against the vLLM engine alone, on the same prompts.

1. In the loop: `rl train configs/quickstart.yaml` without few-shot examples, 2-digit addition only
   (8 prompts x 4 samples, up to 64 new tokens, temperature 1, fp32, one local worker, synchronous),
   for `--steps` steps. The learning rate is ~0 (1e-12): the learner does all of its usual work
   (forward, backward, AdamW, weight sync to the worker every step) but the weights keep their
   values, so the engine alone below can regenerate the very same completions. Per step it reads
   the loop's own `rollout/tokens_per_s` (generated tokens / time from sending the prompts to
   having every sample back, `rollout/seconds`) from metrics.jsonl, and the worker's account of
   the same request from its log (time inside the engine's generate call, time scoring).
2. The engine alone: a `RolloutEngine` built as the worker builds it, on each step's prompts (the
   task ids in trained_samples.jsonl) with the step's sampling seed; warmed up once, then every
   step's prompts `--rounds` times; the median per step counts.

Step 1 is left out of both: it is vLLM's warm-up (the engine's first generate call; its start-up
is not in it: the learner sends no task before the worker says its engine is up).

value:     median over steps 2..N of the loop's rollout/tokens_per_s
reference: median over the same steps of the engine alone on the same prompts and seeds
ratio:     value / reference

    python bench/rollout_in_loop.py [--steps 6] [--rounds 2] [--out runs/bench-rollout-in-loop]
    python bench/rollout_in_loop.py --reuse RUN_DIR   # the engine alone again, on a finished run's prompts

`rl train`'s output is kept in RUN_DIR/train.log. About 6 minutes on a quiet 2-core machine.

The last line printed is one JSON object:
{"metric": "rollout_in_loop_tokens_per_s", "value": ..., "reference": ..., "ratio": ..., "unit": "tokens/s"}
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OVERRIDES = [
    "env.sources.0.few_shot=0", "env.sources.0.distributions=[add_2d]", "train.lr=1e-12",
    "logging.wandb=disabled", "logging.progress=false", "eval.before=false", "eval.after=false",
]
# rollout/worker.py logs one such line per request it answers
WORKER_LINE = re.compile(r"worker \d+: request (\d+): \d+ prompts, (\d+) tokens; generate ([\d.]+) s .*score ([\d.]+) s, in all ([\d.]+) s")


def config_overrides(steps: int, out: Path, name: str) -> list[str]:
    return [*OVERRIDES, f"train.steps={steps}", f"run.output_dir={out}", f"run.name={name}"]


def train_in_loop(steps: int, out: Path, name: str) -> Path:
    """Run `rl train`; its output goes to train.log in the run folder, which is returned."""
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "rl.cli", "train", "configs/quickstart.yaml", *config_overrides(steps, out, name)]  # cwd=REPO
    log_path = out / f"{name}.log"
    with log_path.open("w") as log:
        code = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        raise SystemExit(f"rl train failed (exit code {code}):\n{log_path.read_text()[-3000:]}")
    run_dir = sorted(out.glob(f"{name}-*"))[-1]
    log_path.rename(run_dir / "train.log")
    return run_dir


def read_run(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(metrics per step, the worker's timings per request in order) of a finished run."""
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    requests = []
    for match in WORKER_LINE.finditer((run_dir / "train.log").read_text()):
        request, tokens, generate, score, total = match.groups()
        requests.append({"request": int(request), "tokens": int(tokens), "generate_s": float(generate),
                         "score_s": float(score), "worker_s": float(total)})
    requests.sort(key=lambda r: r["request"])
    return metrics, requests


def step_prompts(run_dir: Path, config) -> dict[int, list]:
    """Each step's tasks, in the order the loop sent them (one group of samples per task)."""
    from envs.source import TaskSource

    by_id = {task.task_id: task for tasks in TaskSource(config).train.values() for task in tasks}
    steps = {}
    for line in (run_dir / "trained_samples.jsonl").read_text().splitlines():
        record = json.loads(line)
        steps[record["step"]] = [by_id[task_id] for task_id in dict.fromkeys(record["task_ids"])]
    return steps


def engine_alone(config, tasks_by_step: dict[int, list], rounds: int) -> dict[int, dict]:
    """Tokens and median generated tokens/s of the engine alone for each step's prompts and seed."""
    from transformers import AutoTokenizer

    from learner.loop import training_sampling
    from rl.models import resolve_model
    from rollout.engine import RolloutEngine
    from rollout.sampling import render_prompts

    model_path = str(resolve_model(config.model))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    r = config.rollout
    engine = RolloutEngine(model_path, dtype=r.dtype, seed=config.run.seed, max_model_len=r.max_model_len,
                           kv_cache_gib=r.kv_cache_gib, enforce_eager=r.enforce_eager, cpu_threads=r.cpu_threads)

    def generate(step: int) -> tuple[int, float]:
        sampling = training_sampling(config, step)
        prompts = render_prompts(tokenizer, tasks_by_step[step])
        start = time.perf_counter()
        out = engine.generate(prompts, n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                              max_tokens=sampling.max_tokens, seed=sampling.seed)
        return sum(len(c.token_ids) for group in out for c in group), time.perf_counter() - start

    try:
        generate(min(tasks_by_step))  # warm-up
        runs: dict[int, list[tuple[int, float]]] = {step: [] for step in tasks_by_step}
        for _ in range(rounds):
            for step in sorted(tasks_by_step):
                runs[step].append(generate(step))
    finally:
        engine.close()
    return {step: {"tokens": results[0][0], "tokens_per_s": statistics.median(t / s for t, s in results)}
            for step, results in runs.items()}


def print_table(config, metrics: list[dict], requests: list[dict], alone: dict[int, dict]) -> tuple[list, list, list]:
    """One line per step from step 2; returns (in-loop rates, engine-alone rates, the worker's generate-only rates)."""
    print("\ntokens: generated in the loop / by the engine alone (equal: the same completions); rates in tokens/s;"
          " worker gen: the worker's generate call only; outside worker: rollout/seconds minus the worker's time")
    print(f"{'step':>4} {'tokens':>9} {'alone':>7} {'in loop':>8} {'worker gen':>11} {'worker score s':>15} {'outside worker s':>17}")
    loop_rates, alone_rates, worker_rates = [], [], []
    for record in metrics:
        step = record["step"]
        if step < 2 or step not in alone:
            continue
        request = requests[step - 1] if len(requests) >= step else None  # one request per step: one worker, no eval
        tokens = round(record["rollout/response_len_mean"] * config.rollout.prompts_per_step * config.rollout.samples_per_prompt)
        loop_rates.append(record["rollout/tokens_per_s"])
        alone_rates.append(alone[step]["tokens_per_s"])
        worker = request["tokens"] / request["generate_s"] if request else float("nan")
        worker_rates.append(worker)
        outside = record["rollout/seconds"] - request["worker_s"] if request else float("nan")
        print(f"{step:>4} {tokens:>4}/{alone[step]['tokens']:<4} {alone_rates[-1]:>7.1f} {loop_rates[-1]:>8.1f} {worker:>11.1f} "
              f"{request['score_s'] if request else float('nan'):>15.2f} {outside:>17.2f}")
    return loop_rates, alone_rates, worker_rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2, help="times the engine alone generates each step's prompts")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench-rollout-in-loop"))
    parser.add_argument("--reuse", metavar="RUN_DIR", help="a run folder of an earlier invocation: measure only the engine alone")
    args = parser.parse_args()
    if args.steps < 2:
        raise SystemExit("--steps must be at least 2 (step 1 is the warm-up)")

    from rl.config import load_config

    if args.reuse:
        run_dir = Path(args.reuse)
    else:
        print(f"in the loop: rl train, {args.steps} steps ...", flush=True)
        start = time.perf_counter()
        run_dir = train_in_loop(args.steps, Path(args.out), f"in-loop-{time.strftime('%H%M%S')}")
        print(f"  {time.perf_counter() - start:.0f} s, {run_dir}", flush=True)
    config = load_config(run_dir / "config.yaml")  # the run's resolved config
    metrics, requests = read_run(run_dir)
    args.steps = len(metrics)
    print(f"engine alone: the same prompts and seeds, {args.rounds} rounds ...", flush=True)
    start = time.perf_counter()
    alone = engine_alone(config, {s: t for s, t in step_prompts(run_dir, config).items() if s >= 2}, args.rounds)
    print(f"  {time.perf_counter() - start:.0f} s", flush=True)

    loop_rates, alone_rates, worker_rates = print_table(config, metrics, requests, alone)
    value, reference = statistics.median(loop_rates), statistics.median(alone_rates)
    print(f"\nmedians, steps 2-{args.steps}: engine alone {reference:.1f} tokens/s; in the loop {value:.1f} "
          f"(the worker's generate call alone: {statistics.median(worker_rates):.1f})")
    print(json.dumps({"metric": "rollout_in_loop_tokens_per_s", "value": round(value, 2), "reference": round(reference, 2),
                      "ratio": round(value / reference, 3), "unit": "tokens/s"}))


if __name__ == "__main__":
    main()
