"""The learner process: set up, evaluate, then train step by step, publishing weights after each.

One step: draw prompts -> workers sample and score them (policy version v) -> drop stale groups ->
GRPO advantages -> one DeepSpeed optimizer step -> publish weights as version v+1 -> log.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformers import AutoTokenizer

from envs.source import TaskSource, reward_sets
from learner.advantages import group_advantages
from learner.batch import TrainSample, build_micro_batches
from learner.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from learner.engine import (
    build_policy_engine,
    build_reference_model,
    init_distributed,
    iter_publish_tensors,
    save_hf,
)
from learner.step import grpo_step
from rewards.registry import accuracy_of
from rl.config import Config, load_config
from rl.coordinator import Coordinator, NoWorkersLeft, Trajectory, drop_stale
from rl.curriculum import make_curriculum
from rl.evaluation import (
    comparison_table,
    eval_sampling,
    evaluation_table,
    flat_metrics,
    summarize_eval,
)
from rl.monitor import Monitor
from rl.transport import LearnerEndpoint
from rl.wire import SamplingParams, Welcome
from rollout.sampling import prompt_lengths

log = logging.getLogger("learner")

ROLLOUT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class StopRequested(Exception):
    """Ctrl-C or SIGTERM: checkpoint and stop at the next safe point."""


class StopSignals:
    """SIGINT/SIGTERM set a flag; outside a critical section they also interrupt at once.

    The optimizer step and the weight publication are one critical section: a checkpoint taken
    halfway through an optimizer step could not be resumed exactly, so a signal that arrives
    there takes effect right after it.
    """

    def __init__(self):
        self.requested = False
        self.critical = False
        signal.signal(signal.SIGINT, self.handle)
        signal.signal(signal.SIGTERM, self.handle)

    def handle(self, signum, frame) -> None:
        self.requested = True
        if not self.critical:
            raise StopRequested

    def __enter__(self):
        self.critical = True

    def __exit__(self, *exc) -> None:
        self.critical = False
        if self.requested and exc[0] is None:
            raise StopRequested


def run(run_dir: Path, model_path: str, resume: bool = False) -> int:
    """Train; returns the process exit code (0, 130 after Ctrl-C/SIGTERM, 3 when every worker is gone)."""
    stop = StopSignals()
    config = load_config(run_dir / "config.yaml")
    torch.set_num_threads(config.train.threads or os.cpu_count() or 1)
    torch.manual_seed(config.run.seed)

    # ---- set-up: data, engine, bus
    source = TaskSource(config, lambda names: make_curriculum(config.curriculum_spec(), names))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    source.drop_overlong(lambda tasks: prompt_lengths(tokenizer, tasks), config.prompt_token_limit())
    init_distributed()
    batch_size = config.rollout.prompts_per_step * config.rollout.samples_per_prompt
    engine = build_policy_engine(
        model_path,
        lr=config.train.lr,
        weight_decay=config.train.weight_decay,
        betas=tuple(config.train.betas),
        warmup_steps=config.train.warmup_steps,
        total_steps=max(1, config.train.steps, config.train.warmup_steps),
        zero_stage=config.train.zero_stage,
        micro_batch_size=config.train.micro_batch_size,
        grad_accum_steps=batch_size // config.train.micro_batch_size,
        grad_clip=config.train.grad_clip,
        dtype=config.train.dtype,
        seed=config.run.seed,
        gradient_checkpointing=config.train.gradient_checkpointing,
    )
    ref_model = build_reference_model(model_path, config.train.dtype) if config.train.kl_coef > 0 else None
    pad_id = pad_token_id(model_path)
    rollout_dtype = ROLLOUT_DTYPES[resolve_rollout_dtype(config.rollout.dtype)]
    bucket_bytes = config.rollout.bucket_mb * 2**20

    # ---- resume: engine, sampling position and counters as they were after the checkpoint's step
    done_step, version, wandb_id = 0, 0, None
    if resume:
        checkpoint = find_checkpoint(run_dir)
        state = load_checkpoint(engine, checkpoint)
        done_step, version, wandb_id = state["step"], state["policy_version"], state.get("wandb_id")
        source.load_state_dict(state["source"])
        truncate_metrics(run_dir / "metrics.jsonl", done_step)
        print(f"[rl] resumed from {checkpoint} (step {done_step}, policy version {version})", flush=True)
    source_before_step = source.state_dict()  # what a checkpoint of the last finished step records

    def current_weights():
        return version, iter_publish_tensors(engine, rollout_dtype, bucket_bytes)

    endpoint = LearnerEndpoint(config.transport.host, config.transport.port, curve_keys=config.transport.curve_keys,
                               allow_insecure=config.transport.allow_insecure_network)
    coordinator = Coordinator(
        endpoint, lambda wid: welcome(config, model_path, run_dir, wid), current_weights,
        heartbeat_timeout_s=config.transport.heartbeat_timeout_s, no_workers_wait_s=config.transport.no_workers_wait_s,
        vocab_size=engine.module.config.vocab_size,
    )
    (run_dir / "learner_address").write_text(endpoint.address)
    log.info("learner listening on %s (%s)", endpoint.address, endpoint.security_description)

    monitor = Monitor(config, run_dir, config.train.steps, initial_step=done_step, wandb_id=wandb_id)
    audit = (run_dir / "trained_samples.jsonl").open("a")

    def checkpoint_now(step: int, source_state: dict) -> None:
        state = {"policy_version": version, "source": source_state, "wandb_id": monitor.wandb_id}
        save_checkpoint(engine, run_dir, step, state, model_path, config.checkpoint.keep_last)

    unlogged: tuple[int, dict] | None = None
    try:
        coordinator.wait_for_workers(
            config.transport.wait_for_workers or max(1, config.rollout.num_workers), config.transport.worker_wait_s
        )
        before = None
        if config.eval.before and done_step == 0:
            before = evaluate(coordinator, source, config, version, run_dir / "eval_before.json")

        # ---- the loop
        for step in range(done_step + 1, config.train.steps + 1):
            step_start = time.perf_counter()
            probabilities = source.curriculum.weights()  # what this step's prompts were drawn from
            tasks = source.next_tasks(config.rollout.prompts_per_step)
            rollout_start = time.perf_counter()
            trajectories = coordinator.run_tasks(tasks, training_sampling(config, step), "train", min_version=version)
            rollout_seconds = time.perf_counter() - rollout_start
            trajectories, dropped = drop_stale(trajectories, version, config.rollout.max_staleness)
            samples = with_advantages(trajectories, config.train.adv_eps)
            # Each sample counts for the distribution that produced it, whatever its policy version;
            # evaluation never gets here, so held-out results never steer the curriculum.
            for name, values in abs_advantages_by_distribution(trajectories, samples).items():
                source.curriculum.observe(name, values)

            micro_batches = build_micro_batches(samples, config.train.micro_batch_size, pad_id)
            with stop:  # the optimizer step and the publication of its weights happen together or not at all
                train_metrics = grpo_step(
                    engine,
                    micro_batches,
                    clip_eps=config.train.clip_eps,
                    kl_coef=config.train.kl_coef,
                    temperature=config.rollout.temperature or 1.0,
                    ref_model=ref_model,
                )
                version += 1
                audit.write(json.dumps({"step": step, "sample_ids": [t.meta.sample_id for t in trajectories],
                                        "task_ids": [t.meta.task_id for t in trajectories],
                                        "policy_versions": [t.meta.policy_version for t in trajectories]}) + "\n")
                audit.flush()
                sync = coordinator.publish(version, iter_publish_tensors(engine, rollout_dtype, bucket_bytes))
                source_before_step = source.state_dict()  # this step is done: a checkpoint now starts the next one
                # written even if a stop comes before the line below is complete
                unlogged = (step, {**rollout_metrics(trajectories, rollout_seconds, config), **train_metrics,
                                   **curriculum_metrics(source.curriculum, probabilities, trajectories),
                                   "policy_version": version, "rollout/dropped_stale": dropped})
            coordinator.wait_for_acks(version, timeout_s=600)

            metrics = {
                **unlogged[1],
                "weight_sync/seconds": max(sync.acked.values(), default=sync.send_seconds),
                "weight_sync/send_seconds": sync.send_seconds,
                "weight_sync/worker_load_seconds": max(sync.load_seconds.values(), default=0.0),
                "workers/alive": len(coordinator.workers),
                "workers/lost": len(coordinator.lost),
                "workers/reassigned_requests": coordinator.reassigned_requests,
                "wire/rejected": sum(endpoint.rejected.values()),
                "time/step_seconds": time.perf_counter() - step_start,
            }
            for event in coordinator.drain_events():
                print(f"[rl] step {step}: {event}; its prompts went to the other workers", flush=True)
            if config.eval.every and step % config.eval.every == 0 and step < config.train.steps:
                result = evaluate(coordinator, source, config, version, run_dir / "eval" / f"step-{step:06d}.json")
                metrics.update(flat_metrics(result))
                print(evaluation_table(result, f"held-out evaluation at step {step}"), flush=True)
            monitor.log(step, metrics)
            monitor.advance(metrics)
            unlogged = None
            if config.checkpoint.every and (step % config.checkpoint.every == 0 or step == config.train.steps):
                checkpoint_now(step, source_before_step)

        after = evaluate(coordinator, source, config, version, run_dir / "eval_after.json") if config.eval.after else None
        if after:
            print(evaluation_table(after, "held-out evaluation after training"), flush=True)
            monitor.summary(flat_metrics(after, "eval/after"))
        if before or after:
            print(comparison_table(before, after), flush=True)
        final_dir = run_dir / "final"
        save_hf(engine, model_path, str(final_dir))
        print(f"[rl] saved the trained policy to {final_dir}", flush=True)
        return 0
    except StopRequested:
        if unlogged is not None:  # the step finished (and is in the checkpoint) but its metrics line was not written yet
            monitor.log(*unlogged)
        finished = version  # every finished step published one version
        print(f"\n[rl] stopping: saving a checkpoint of step {finished}", flush=True)
        if finished > 0:
            checkpoint_now(finished, source_before_step)
            print(f"[rl] resume with: rl train --resume {run_dir}", flush=True)
        return 130
    except NoWorkersLeft as err:
        if unlogged is not None:
            monitor.log(*unlogged)
        finished = version
        print(f"[rl] error: {err}", flush=True)
        if finished > 0:
            checkpoint_now(finished, source_before_step)
            print(f"[rl] saved a checkpoint of step {finished}; start workers and resume with: rl train --resume {run_dir}", flush=True)
        return 3
    finally:
        stop.critical = True  # no second interrupt while closing
        audit.close()
        coordinator.shutdown("training finished")
        monitor.close()
        endpoint.close()


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines of steps after the checkpoint: the resumed run writes them again."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= last_step]
    path.write_text("".join(line + "\n" for line in kept))


# ------------------------------------------------------------------ pieces of a step


def training_sampling(config: Config, step: int) -> SamplingParams:
    """Seeded per step, so a resumed run samples what the uninterrupted run would have."""
    r = config.rollout
    return SamplingParams(
        n=r.samples_per_prompt, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_new_tokens,
        seed=(config.run.seed * 1_000_003 + step * 7_919) % 2**31,
    )


def with_advantages(trajectories: list[Trajectory], eps: float) -> list[TrainSample]:
    """Group the trajectories by prompt and attach GRPO advantages, in input order."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(trajectories):
        groups[t.group_key].append(i)
    advantages = [0.0] * len(trajectories)
    for indices in groups.values():
        rewards = torch.tensor([[trajectories[i].meta.reward for i in indices]], dtype=torch.float64)
        for i, a in zip(indices, group_advantages(rewards, eps=eps)[0].tolist()):
            advantages[i] = a
    return [
        TrainSample(
            prompt_ids=t.prompt_ids.tolist(),
            completion_ids=t.completion_ids.tolist(),
            rollout_logprobs=t.rollout_logprobs.tolist(),
            advantage=a,
        )
        for t, a in zip(trajectories, advantages)
    ]


def abs_advantages_by_distribution(trajectories: list[Trajectory], samples: list[TrainSample]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for t, s in zip(trajectories, samples):
        out[t.meta.distribution].append(abs(s.advantage))
    return out


def curriculum_metrics(curriculum, probabilities: dict[str, float], trajectories: list[Trajectory]) -> dict[str, float]:
    """Per distribution: the probability this step drew from, the window mean |A| and sample count after
    observing it, the accuracy and number of this step's samples, and how stale they were."""
    stats = curriculum.stats()
    metrics: dict[str, float] = {}
    for name, probability in probabilities.items():
        metrics[f"curriculum/{name}/probability"] = probability
        if "mean_abs_advantage" in stats[name]:  # the UCB curriculum's window; the baselines keep none
            metrics[f"curriculum/{name}/mean_abs_advantage"] = stats[name]["mean_abs_advantage"]
        metrics[f"curriculum/{name}/count"] = stats[name]["count"]
        step_samples = [t.meta for t in trajectories if t.meta.distribution == name]
        metrics[f"curriculum/{name}/step_samples"] = len(step_samples)
        accuracy = accuracy_of(step_samples)
        if accuracy is not None:
            metrics[f"curriculum/{name}/step_accuracy"] = accuracy
    if trajectories:
        newest = max(t.meta.policy_version for t in trajectories)
        lags = [newest - t.meta.policy_version for t in trajectories]
        metrics["rollout/policy_version_lag_mean"] = sum(lags) / len(lags)
    return metrics


def rollout_metrics(trajectories: list[Trajectory], seconds: float, config: Config) -> dict[str, float]:
    rewards = torch.tensor([t.meta.reward for t in trajectories])
    lengths = torch.tensor([t.meta.completion_len for t in trajectories], dtype=torch.float32)
    metrics = {
        "rollout/reward_mean": rewards.mean().item(),
        "rollout/reward_std": rewards.std().item() if len(rewards) > 1 else 0.0,
        "rollout/accuracy": accuracy_of([t.meta for t in trajectories]),
        "rollout/response_len_mean": lengths.mean().item(),
        "rollout/response_len_max": lengths.max().item(),
        "rollout/truncated_frac": sum(t.meta.finish_reason == "length" for t in trajectories) / len(trajectories),
        "rollout/tokens_per_s": lengths.sum().item() / max(seconds, 1e-9),
        "rollout/seconds": seconds,
    }
    components: dict[str, list[float]] = defaultdict(list)
    failures: dict[str, int] = defaultdict(int)
    for t in trajectories:
        for name, value in t.meta.reward_components.items():
            components[name].append(value)
            components[f"{t.meta.distribution}/{name}"].append(value)
            failures[name] += name in t.meta.reward_failed
    for name, values in components.items():
        metrics[f"reward/{name}"] = sum(values) / len(values)
    for name, count in failures.items():
        metrics[f"reward_errors/{name}"] = count
    return metrics


# ------------------------------------------------------------------ evaluation and helpers


def evaluate(coordinator: Coordinator, source: TaskSource, config: Config, version: int, path: Path) -> dict:
    """mean@k, pass@k, reward, length and truncation on the held-out split. Never feeds the curriculum."""
    start = time.perf_counter()
    trajectories = coordinator.run_tasks(source.held_out(), eval_sampling(config), "eval", min_version=version)
    result = summarize_eval([t.meta for t in trajectories], config.eval.samples)
    result["policy_version"] = version
    result["seconds"] = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return result


def welcome(config: Config, model_path: str, run_dir: Path, worker_id: int) -> Welcome:
    return Welcome(
        worker_id=worker_id,
        model_path=model_path,
        rollout=config.rollout.model_dump(mode="json"),
        reward_sets=reward_sets(config),
        reward_modules=config.reward_modules,
        seed=config.run.seed,
        run_dir=str(run_dir),
        heartbeat_interval_s=config.transport.heartbeat_interval_s,
        learner_timeout_s=config.transport.learner_timeout_s,
    )


def resolve_rollout_dtype(dtype: str) -> str:
    if dtype != "auto":
        return dtype
    return "bfloat16" if torch.cuda.is_available() else "float32"


def pad_token_id(model_path: str) -> int:
    config = json.loads((Path(model_path) / "config.json").read_text())
    pad = config.get("pad_token_id")
    if pad is None:
        eos = config.get("eos_token_id", 0)
        pad = eos[0] if isinstance(eos, list) else eos
    return int(pad)
