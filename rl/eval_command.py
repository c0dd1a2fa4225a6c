"""`rl eval MODEL_OR_RUN_DIR [CONFIG]`: evaluate a model on a config's held-out sets, in this process.

The held-out tasks are built exactly as `rl train` builds them (same sources, sizes and seed), so a
trained run and its base model are scored on the same tasks. Generation runs in an in-process
vLLM engine and scoring in the same reward pool as the rollout workers; results are a table on
the terminal and a JSON file.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime
from pathlib import Path

from rl.config import Config, ConfigError, load_config

log = logging.getLogger("eval")


class EvalTargetError(ValueError):
    """The thing to evaluate is neither a run folder with a final model, nor a model."""


def resolve_target(target: str, config_path: str | None, overrides: list[str]) -> tuple[Config, Path, Path | None]:
    """(config, model folder, run folder or None) for `rl eval TARGET [CONFIG]`."""
    from rl.models import resolve_model

    path = Path(target).expanduser()
    run_dir = path if (path / "config.yaml").is_file() and not (path / "config.json").is_file() else None
    if config_path is None:
        if run_dir is None:
            raise ConfigError(f"give a config after {target}: `rl eval {target} configs/x.yaml` (only a run folder brings its own)")
        config_path = str(run_dir / "config.yaml")
    config = load_config(config_path, overrides)
    if run_dir is None:
        return config, resolve_model(target), None
    final = run_dir / "final"
    if not (final / "config.json").is_file():
        raise EvalTargetError(f"{run_dir} has no trained model in final/ (the run did not finish); evaluate a model folder instead")
    return config, final.resolve(), run_dir.resolve()


def default_output(config: Config, model_path: Path, run_dir: Path | None) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    if run_dir is not None:
        return run_dir / f"eval-{stamp}.json"
    return Path(config.run.output_dir) / f"eval-{model_path.name}-{stamp}.json"


def run_eval(target: str, config_path: str | None, overrides: list[str], output: str | None = None) -> dict:
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from envs.source import TaskSource, check_run_inputs, reward_sets
    from rewards.pool import RewardPool
    from rl.evaluation import eval_sampling, evaluation_table, summarize_eval
    from rl.launcher import child_env
    from rl.prompts import prompt_lengths
    from rollout.engine import RolloutEngine
    from rollout.sampling import sample_and_score

    config, model_path, run_dir = resolve_target(target, config_path, overrides)
    check_run_inputs(config)
    for key, value in child_env().items():
        os.environ.setdefault(key, value)

    start = time.perf_counter()
    print(f"[rl] building the held-out sets of {len(config.env.sources)} source(s)", flush=True)
    source = TaskSource(config)
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    source.drop_overlong(lambda tasks: prompt_lengths(tokenizer, tasks), config.prompt_token_limit())
    sampling = eval_sampling(config)
    print(f"[rl] evaluating {model_path} ({sum(map(len, source.test.values()))} tasks x {sampling.n} samples)", flush=True)
    engine = RolloutEngine(
        str(model_path), dtype=config.rollout.dtype, seed=config.run.seed, max_model_len=config.rollout.max_model_len,
        kv_cache_gib=config.rollout.kv_cache_gib, enforce_eager=config.rollout.enforce_eager, cpu_threads=config.rollout.cpu_threads,
        gpu_memory_utilization=config.rollout.gpu_memory_utilization, gpu_memory_gib=config.rollout.gpu_memory_gib,
    )
    rewards = RewardPool(reward_sets(config), config.rollout.reward_processes, config.rollout.reward_timeout_s, modules=config.reward_modules)
    metas = []
    try:
        tasks_total = sum(len(tasks) for tasks in source.test.values())
        with tqdm(total=tasks_total, unit="task", desc="eval", disable=not config.logging.progress) as bar:
            for name, tasks in source.test.items():
                bar.set_postfix_str(name)
                batch = sample_and_score(
                    engine, tokenizer, rewards, tasks, sampling, sample_prefix=f"eval-{name}", policy_version=0, worker_id=0
                )
                metas.extend(batch.metas)
                bar.update(len(tasks))
    finally:
        engine.close()
        rewards.close()
    result = summarize_eval(metas, sampling.n)
    result.update(model=str(model_path), run_dir=str(run_dir) if run_dir else None, seconds=time.perf_counter() - start)
    print(evaluation_table(result, f"held-out evaluation of {model_path.name}"), flush=True)
    path = Path(output) if output else default_output(config, model_path, run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"[rl] results: {path}", flush=True)
    return result
