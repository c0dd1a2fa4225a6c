"""The learner process: set up, evaluate, then train step by step, publishing weights after each.

One step: draw prompts -> workers sample and score them (policy version v) -> drop stale groups ->
advantages (GRPO, Dr. GRPO, RLOO; or GAE from the critic inside the step) -> [dynamic sampling:
drop groups whose rewards are all equal, sample more] -> DeepSpeed update(s) -> publish weights as
version v+1 -> log.

With rollout.async the next step's prompts go to the workers before this step trains, so
generation (with version v) overlaps training; those samples are one version old when trained on,
and truncated importance sampling corrects for it. The curriculum then also sees each step's
advantages one step later.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer

from envs.source import TaskSource, reward_sets
from learner.advantages import group_advantages, rloo_advantages
from learner.batch import TrainSample, build_micro_batches
from learner.checkpoint import (
    STATE_FILE,
    checkpoint_root,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
    step_dir_name,
)
from learner.distributed import (
    broadcast_int,
    broadcast_samples,
    is_main,
    rank,
    world_size,
)
from learner.engine import (
    Publication,
    build_policy_engine,
    build_reference_model,
    init_distributed,
    iter_publish_tensors,
    resolve_rollout_dtype,
    save_hf,
)
from learner.step import StepSettings, train_step
from rewards.registry import accuracy_of
from rl.config import Config, load_config
from rl.coordinator import (
    Coordinator,
    NoWorkersLeft,
    RolloutJob,
    Trajectory,
    drop_stale,
)
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

    def __init__(self, interrupt: bool = True):
        self.requested = False
        self.critical = not interrupt  # a rank that must never be interrupted only records the request
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


# Commands rank 0 broadcasts to the other learner ranks (each followed by one int argument).
STEP, CHECKPOINT, PUBLISH, FINISH, STOP = range(1, 6)


class Ranks:
    """Rank 0's side of the learner ranks' protocol; with one rank every call is a no-op."""

    def __init__(self, world_size: int):
        self.multi = world_size > 1

    def tell(self, command: int, argument: int = 0) -> None:
        if self.multi:
            broadcast_int(command)
            broadcast_int(argument)

    def send_samples(self, samples: list[TrainSample]) -> None:
        if self.multi:
            broadcast_samples(samples, TrainSample)


def run(run_dir: Path, model_path: str, resume: bool = False) -> int:
    """Train; returns the process exit code (0, 130 after Ctrl-C/SIGTERM, 3 when every worker is gone).

    Every learner rank runs this. Rank 0 does everything; the other ranks (learner.world_size > 1)
    hold their part of the engines and follow rank 0's commands (`follow`).
    """
    config = load_config(run_dir / "config.yaml")
    init_distributed()
    main, ranks = is_main(), Ranks(world_size())
    stop = StopSignals(interrupt=main)  # the other ranks stop when rank 0 says so, after the same checkpoint
    local_ranks = int(os.environ.get("LOCAL_SIZE", "1"))
    torch.set_num_threads(config.train.threads or max(1, (os.cpu_count() or 1) // local_ranks))
    torch.manual_seed(config.run.seed)
    if not main:
        logging.getLogger().setLevel(logging.WARNING)

    # ---- set-up: engines on every rank
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
    critic = None
    if config.train.advantage == "gae":
        from learner.critic import build_critic_engine

        critic = build_critic_engine(
            config.critic.model or model_path, lr=config.critic.lr, warmup_steps=config.critic.warmup_steps,
            total_steps=max(1, config.train.steps, config.critic.warmup_steps), zero_stage=config.train.zero_stage,
            micro_batch_size=config.train.micro_batch_size, grad_accum_steps=batch_size // config.train.micro_batch_size,
            grad_clip=config.train.grad_clip, dtype=config.train.dtype, gradient_checkpointing=config.train.gradient_checkpointing,
        )
    trainer = Trainer(config, engine, critic, ref_model, step_settings(config), pad_token_id(model_path),
                      ROLLOUT_DTYPES[resolve_rollout_dtype(config.rollout.dtype)], config.rollout.bucket_mb * 2**20)
    state = None
    if resume:
        checkpoint = find_checkpoint(run_dir)
        state = load_checkpoint(engine, checkpoint, critic)  # collective: every rank restores its part
        if main:
            print(f"[rl] resumed from {checkpoint} (step {state['step']}, policy version {state['policy_version']})", flush=True)
    if not main:
        return follow(trainer, run_dir, model_path)
    return lead(trainer, ranks, stop, run_dir, model_path, state)


class Trainer:
    """What every rank does in lockstep: train on a batch, publish (gather) weights, checkpoint, save."""

    def __init__(self, config: Config, engine, critic, ref_model, settings: StepSettings, pad_id: int,
                 rollout_dtype: torch.dtype, bucket_bytes: int):
        self.config, self.engine, self.critic, self.ref_model = config, engine, critic, ref_model
        self.settings, self.pad_id, self.rollout_dtype, self.bucket_bytes = settings, pad_id, rollout_dtype, bucket_bytes

    def train(self, samples: list[TrainSample]) -> dict[str, float] | None:
        """One update on the batch; None (and no update) when nothing in it can be trained on."""
        micro_batches = build_micro_batches(samples, self.config.train.micro_batch_size, self.pad_id) if samples else []
        if sum(mb.num_loss_tokens for mb in micro_batches) == 0:
            return None
        return train_step(self.engine, micro_batches, self.settings, ref_model=self.ref_model, critic=self.critic,
                          rank=rank(), world_size=world_size())

    def publication(self) -> Publication:
        return iter_publish_tensors(self.engine, self.rollout_dtype, self.bucket_bytes)

    def take_part_in_publication(self) -> None:
        """A rank other than 0: under ZeRO-3 each bucket is an all-gather that needs every rank."""
        if self.engine.zero_optimization_partition_weights():
            for _ in self.publication():
                pass

    def checkpoint(self, run_dir: Path, step: int, state: dict, model_path: str) -> None:
        save_checkpoint(self.engine, run_dir, step, state, model_path, self.config.checkpoint.keep_last, self.critic)

    def save_final(self, run_dir: Path, model_path: str) -> Path:
        final_dir = run_dir / "final"
        save_hf(self.engine, model_path, str(final_dir))
        return final_dir


def follow(trainer: Trainer, run_dir: Path, model_path: str) -> int:
    """A learner rank other than 0: train on the batches rank 0 broadcasts, join its collectives."""
    while True:
        command, argument = broadcast_int(None), broadcast_int(None)
        if command == STEP:
            if trainer.train(broadcast_samples(None, TrainSample)) is not None:
                trainer.take_part_in_publication()
        elif command == PUBLISH:
            trainer.take_part_in_publication()
        elif command == CHECKPOINT:
            trainer.checkpoint(run_dir, argument, {}, model_path)
        elif command == FINISH:
            trainer.save_final(run_dir, model_path)
            return 0
        elif command == STOP:
            return argument
        else:
            raise RuntimeError(f"learner rank {rank()}: unknown command {command} from rank 0")


def lead(trainer: Trainer, ranks: Ranks, stop: StopSignals, run_dir: Path, model_path: str, state: dict | None) -> int:
    """Rank 0: the task source, the workers, evaluation, logging; tells the other ranks what to do."""
    config, engine = trainer.config, trainer.engine
    source = TaskSource(config, lambda names: make_curriculum(config.curriculum_spec(), names))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    source.drop_overlong(lambda tasks: prompt_lengths(tokenizer, tasks), config.prompt_token_limit())

    # ---- resume: sampling position and counters as they were after the checkpoint's step
    done_step, version, wandb_id = 0, 0, None
    if state is not None:
        done_step, version, wandb_id = state["step"], state["policy_version"], state.get("wandb_id")
        source.load_state_dict(state["source"])
        truncate_metrics(run_dir / "metrics.jsonl", done_step)
    source_before_step = source.state_dict()  # what a checkpoint of the last finished step records
    # Several ranks under ZeRO-3: a publication is collective, so a worker that joins mid-run waits for the next one.
    collective_publication = ranks.multi and engine.zero_optimization_partition_weights()

    endpoint = LearnerEndpoint(config.transport.host, config.transport.port, curve_keys=config.transport.curve_keys,
                               allow_insecure=config.transport.allow_insecure_network)
    coordinator = Coordinator(
        endpoint, lambda wid: welcome(config, model_path, run_dir, wid), lambda: (version, trainer.publication()),
        heartbeat_timeout_s=config.transport.heartbeat_timeout_s, no_workers_wait_s=config.transport.no_workers_wait_s,
        vocab_size=engine.module.config.vocab_size, backup_after=config.rollout.backup_after,
        publish_on_join=not collective_publication,
    )
    (run_dir / "learner_address").write_text(endpoint.address)
    log.info("learner listening on %s (%s); %d learner rank(s), ZeRO stage %d", endpoint.address,
             endpoint.security_description, world_size(), config.train.zero_stage)

    monitor = Monitor(config, run_dir, config.train.steps, initial_step=done_step, wandb_id=wandb_id)
    audit = (run_dir / "trained_samples.jsonl").open("a")
    last_step = done_step  # the last step whose update (or skip) is complete

    def checkpoint_now(step: int, source_state: dict) -> None:
        if (checkpoint_root(run_dir) / step_dir_name(step) / STATE_FILE).is_file():
            return  # already saved (a periodic save, then Ctrl-C); rank 0 decides for every rank
        ranks.tell(CHECKPOINT, step)
        trainer.checkpoint(run_dir, step, {"policy_version": version, "source": source_state, "wandb_id": monitor.wandb_id},
                           model_path)

    unlogged: tuple[int, dict] | None = None
    try:
        coordinator.wait_for_workers(
            config.transport.wait_for_workers or max(1, config.rollout.num_workers), config.transport.worker_wait_s
        )
        if collective_publication and version > 0:  # resumed: the workers joined without the weights
            with stop:
                ranks.tell(PUBLISH)
                coordinator.publish(version, trainer.publication())
        before = None
        if config.eval.before and done_step == 0:
            before = evaluate(coordinator, source, config, version, run_dir / "eval_before.json")

        # ---- the loop
        next_job: SubmittedStep | None = None  # async: the next step's prompts, already at the workers
        for step in range(done_step + 1, config.train.steps + 1):
            step_start = time.perf_counter()
            if next_job is None:
                next_job = submit_step(coordinator, source, config, step, version)
            job, next_job = next_job, None
            batch = collect_step(coordinator, source, config, step, version, job)
            source_before_next = None
            if config.rollout.async_ and step < config.train.steps:
                source_before_next = source.state_dict()  # a checkpoint of this step restarts from the next draw
                next_job = submit_step(coordinator, source, config, step + 1, version)  # generated while this step trains
            trajectories = batch.trained

            with stop:  # the update and the publication of its weights happen together or not at all
                ranks.tell(STEP)
                ranks.send_samples(batch.samples)
                train_metrics = trainer.train(batch.samples)
                sync = None
                if train_metrics is not None:
                    version += 1
                    sync = coordinator.publish(version, trainer.publication())
                else:  # every group was dropped or filtered: nothing to learn from, the policy stays as it is
                    train_metrics = {"train/skipped": 1.0}
                    print(f"[rl] step {step}: no trainable samples (all groups dropped or filtered); no update", flush=True)
                audit.write(json.dumps({"step": step, "sample_ids": [t.meta.sample_id for t in trajectories],
                                        "task_ids": [t.meta.task_id for t in trajectories],
                                        "policy_versions": [t.meta.policy_version for t in trajectories]}) + "\n")
                audit.flush()
                last_step = step
                source_before_step = source_before_next or source.state_dict()  # a checkpoint now starts the next step
                # written even if a stop comes before the line below is complete
                unlogged = (step, {**rollout_metrics(batch.generated, batch.rollout_seconds, config), **train_metrics,
                                   **batch.metrics, **curriculum_metrics(source.curriculum, batch.probabilities, batch.generated),
                                   "policy_version": version, "rollout/dropped_stale": batch.dropped_stale})
            if sync is not None and not config.rollout.async_:  # async: the workers load it after their current prompts
                coordinator.wait_for_acks(version, timeout_s=600)

            metrics = {
                **unlogged[1],
                **sync_metrics(sync),
                "workers/alive": len(coordinator.workers),
                "workers/lost": len(coordinator.lost),
                "workers/reassigned_requests": coordinator.reassigned_requests,
                "workers/backup_requests": coordinator.backup_requests,
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
                with stop:
                    checkpoint_now(step, source_before_step)

        after = evaluate(coordinator, source, config, version, run_dir / "eval_after.json") if config.eval.after else None
        if after:
            print(evaluation_table(after, "held-out evaluation after training"), flush=True)
            monitor.summary(flat_metrics(after, "eval/after"))
        if before or after:
            print(comparison_table(before, after), flush=True)
        stop.critical = True
        ranks.tell(FINISH)
        final_dir = trainer.save_final(run_dir, model_path)
        print(f"[rl] saved the trained policy to {final_dir}", flush=True)
        return 0
    except StopRequested:
        stop.critical = True  # no second interrupt while saving
        if unlogged is not None:  # the step finished (and is in the checkpoint) but its metrics line was not written yet
            monitor.log(*unlogged)
        print(f"\n[rl] stopping: saving a checkpoint of step {last_step}", flush=True)
        if last_step > 0:
            checkpoint_now(last_step, source_before_step)
            print(f"[rl] resume with: rl train --resume {run_dir}", flush=True)
        ranks.tell(STOP, 130)
        return 130
    except NoWorkersLeft as err:
        stop.critical = True
        if unlogged is not None:
            monitor.log(*unlogged)
        print(f"[rl] error: {err}", flush=True)
        if last_step > 0:
            checkpoint_now(last_step, source_before_step)
            print(f"[rl] saved a checkpoint of step {last_step}; start workers and resume with: rl train --resume {run_dir}", flush=True)
        ranks.tell(STOP, 3)
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


def training_sampling(config: Config, step: int, round_: int = 0) -> SamplingParams:
    """Seeded per step (and dynamic-sampling round), so a resumed run samples what the uninterrupted run would have."""
    r = config.rollout
    return SamplingParams(
        n=r.samples_per_prompt, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_new_tokens,
        seed=(config.run.seed * 1_000_003 + step * 7_919 + round_ * 104_729) % 2**31,
    )


def step_settings(config: Config) -> StepSettings:
    t, c = config.train, config.critic
    return StepSettings(
        clip_low=t.clip_eps_low or t.clip_eps, clip_high=t.clip_eps_high or t.clip_eps, kl_coef=t.kl_coef,
        kl_estimator=t.kl_estimator, kl_in=t.kl_in, entropy_coef=t.entropy_coef, loss_agg=t.loss_agg,
        length_norm=float(t.length_norm or config.rollout.max_new_tokens), temperature=config.rollout.temperature or 1.0,
        tis_cap=t.tis_cap if config.rollout.async_ else None, epochs=t.epochs, mini_batches=t.mini_batches,
        gae=t.advantage == "gae", gamma=c.gamma, lam=c.lam, value_clip=c.value_clip, whiten_advantages=c.whiten_advantages,
    )


class StepBatch:
    """What one step's rollouts gave: everything generated, and the part that is trained on."""

    def __init__(self, probabilities: dict[str, float]):
        self.probabilities = probabilities  # the curriculum's weights the first prompts were drawn with
        self.generated: list[Trajectory] = []  # every fresh-enough sample of every round (metrics, curriculum)
        self.trained: list[Trajectory] = []
        self.samples: list[TrainSample] = []  # `trained` with advantages, in the same order
        self.rollout_seconds = 0.0
        self.dropped_stale = 0
        self.metrics: dict[str, float] = {}


@dataclass
class SubmittedStep:
    job: RolloutJob
    probabilities: dict[str, float]  # the curriculum's weights its prompts were drawn with
    submitted_at: float


def submit_step(coordinator: Coordinator, source: TaskSource, config: Config, step: int, version: int) -> SubmittedStep:
    probabilities = source.curriculum.weights()
    job = coordinator.submit(source.next_tasks(config.rollout.prompts_per_step), training_sampling(config, step), "train",
                             min_version=version)
    return SubmittedStep(job, probabilities, time.perf_counter())


def collect_step(coordinator: Coordinator, source: TaskSource, config: Config, step: int, version: int,
                 submitted: SubmittedStep) -> StepBatch:
    """Wait for the step's samples; with dynamic sampling, keep sampling until prompts_per_step groups carry signal."""
    batch = StepBatch(submitted.probabilities)
    wanted, rounds, generated_groups = config.rollout.prompts_per_step, 1, 0
    trajectories = coordinator.collect(submitted.job)
    batch.rollout_seconds += time.perf_counter() - submitted.submitted_at
    while True:
        fresh, dropped = drop_stale(trajectories, version, config.rollout.max_staleness)
        batch.dropped_stale += dropped
        samples = with_advantages(fresh, config)
        # Each sample counts for the distribution that produced it, dropped groups included (|A| = 0
        # says "too easy or too hard"); evaluation never gets here, so held-out results never steer it.
        for name, values in abs_advantages_by_distribution(fresh, samples).items():
            source.curriculum.observe(name, values)
        batch.generated += fresh
        generated_groups += len({t.group_key for t in fresh})
        if config.train.dynamic_sampling:
            fresh, samples = keep_informative_groups(fresh, samples)
        batch.trained += fresh
        batch.samples += samples
        kept_groups = len({t.group_key for t in batch.trained})
        if not config.train.dynamic_sampling or kept_groups >= wanted or rounds >= config.train.dynamic_sampling_rounds:
            break
        # DAPO: sample more prompts; ask for the shortfall divided by the share of groups kept so far
        keep_rate = max(kept_groups / max(generated_groups, 1), 0.25)
        more = min(4 * wanted, math.ceil((wanted - kept_groups) / keep_rate))
        start = time.perf_counter()
        trajectories = coordinator.run_tasks(source.next_tasks(more), training_sampling(config, step, rounds), "train",
                                             min_version=version)
        batch.rollout_seconds += time.perf_counter() - start
        rounds += 1
    if config.train.dynamic_sampling:
        batch.trained, batch.samples = first_groups(batch.trained, batch.samples, wanted)
        batch.metrics.update({
            "rollout/dynamic_sampling_rounds": rounds,
            "rollout/groups_generated": generated_groups,
            "rollout/groups_trained": len({t.group_key for t in batch.trained}),
        })
        if len({t.group_key for t in batch.trained}) < wanted:
            log.warning("step %d: only %d of %d groups had unequal rewards after %d rounds of sampling; training on them",
                        step, len({t.group_key for t in batch.trained}), wanted, rounds)
    if config.train.overlong_filter:
        batch.metrics["train/overlong_filtered"] = sum(not s.in_loss for s in batch.samples)
    if batch.generated:  # how many versions behind the learner the step's samples are (async: the first round's are 1)
        batch.metrics["rollout/staleness_mean"] = sum(version - t.meta.policy_version for t in batch.generated) / len(batch.generated)
    return batch


def keep_informative_groups(trajectories: list[Trajectory], samples: list[TrainSample]) -> tuple[list[Trajectory], list[TrainSample]]:
    """DAPO's dynamic sampling filter: drop every group whose rewards are all equal (its advantages are all 0)."""
    rewards: dict[str, set[float]] = defaultdict(set)
    for t in trajectories:
        rewards[t.group_key].add(t.meta.reward)
    keep = [i for i, t in enumerate(trajectories) if len(rewards[t.group_key]) > 1]
    return [trajectories[i] for i in keep], [samples[i] for i in keep]


def first_groups(trajectories: list[Trajectory], samples: list[TrainSample], count: int) -> tuple[list[Trajectory], list[TrainSample]]:
    """The samples of the first `count` groups, in order."""
    order = list(dict.fromkeys(t.group_key for t in trajectories))[:count]
    wanted = set(order)
    keep = [i for i, t in enumerate(trajectories) if t.group_key in wanted]
    return [trajectories[i] for i in keep], [samples[i] for i in keep]


def with_advantages(trajectories: list[Trajectory], config: Config) -> list[TrainSample]:
    """Group the trajectories by prompt and attach sequence advantages (0 under GAE, which works per token), in input order."""
    estimator, eps = config.train.advantage, config.train.adv_eps
    groups: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(trajectories):
        groups[t.group_key].append(i)
    advantages = [0.0] * len(trajectories)
    if estimator != "gae":
        for indices in groups.values():
            rewards = torch.tensor([[trajectories[i].meta.reward for i in indices]], dtype=torch.float64)
            if estimator == "rloo":
                values = rloo_advantages(rewards)
            else:
                values = group_advantages(rewards, eps=eps, normalize_std=estimator == "grpo")
            for i, a in zip(indices, values[0].tolist()):
                advantages[i] = a
    return [
        TrainSample(
            prompt_ids=t.prompt_ids.tolist(),
            completion_ids=t.completion_ids.tolist(),
            rollout_logprobs=t.rollout_logprobs.tolist(),
            advantage=a,
            score=float(t.meta.reward),
            # DAPO's overlong filtering: a truncated answer is not judged (neither rewarded nor punished)
            in_loss=not (config.train.overlong_filter and t.meta.finish_reason == "length"),
        )
        for t, a in zip(trajectories, advantages)
    ]


def sync_metrics(sync) -> dict[str, float]:
    if sync is None:
        return {}
    return {
        "weight_sync/seconds": max(sync.acked.values(), default=sync.send_seconds),
        "weight_sync/send_seconds": sync.send_seconds,
        "weight_sync/worker_load_seconds": max(sync.load_seconds.values(), default=0.0),
    }


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


def pad_token_id(model_path: str) -> int:
    config = json.loads((Path(model_path) / "config.json").read_text())
    pad = config.get("pad_token_id")
    if pad is None:
        eos = config.get("eos_token_id", 0)
        pad = eos[0] if isinstance(eos, list) else eos
    return int(pad)
