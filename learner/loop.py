"""The learner process: set up, evaluate, then train step by step, publishing weights after each.

One step, phase by phase: collect (draw prompts -> workers sample and score them with policy
version v -> drop stale groups -> advantages: GRPO, Dr. GRPO, RLOO, or GAE from the critic inside
the step -> [dynamic sampling: drop groups whose rewards are all equal, sample more]) -> train
(DeepSpeed update(s)) -> publish (weights as version v+1) -> evaluate -> checkpoint -> log. The metrics
line comes last so that it holds the time of every phase, the checkpoint's included; a stop during the
checkpoint still writes it (`Progress.unlogged`).

With rollout.async the next step's prompts go to the workers before this step trains, so
generation (with version v) overlaps training; those samples are one version old when trained on,
and truncated importance sampling corrects for it. The curriculum then also sees each step's
advantages one step later.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch

from learner.checkpoint import STATE_FILE, checkpoint_root, find_checkpoint, load_checkpoint, step_dir_name
from learner.collect import StepBatch, collect_step, submit_step
from learner.completions import completion_rows, completions_due
from learner.distributed import is_main, world_size
from learner.engine import init_distributed
from learner.evaluate import evaluate_after, evaluate_before, evaluate_during
from learner.lead_run import LeadRun, open_lead_run
from learner.ranks import CHECKPOINT, FINISH, PUBLISH, STEP, STOP, Ranks, follow
from learner.step_metrics import finished_step_metrics, step_record
from learner.stop import StopRequested, StopSignals
from learner.trainer import Trainer, build_trainer
from rl.config import load_config
from rl.console import say
from rl.coordinator import NoWorkersLeft, SyncStats


def run(run_dir: Path, model_path: str, resume: bool = False, resume_step: int | None = None) -> int:
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

    trainer = build_trainer(config, model_path)  # engines on every rank
    state = None
    if resume:
        checkpoint = find_checkpoint(run_dir, resume_step)
        state = load_checkpoint(trainer.engine, checkpoint, trainer.critic)  # collective: every rank restores its part
        if main:
            say(f"[rl] resumed from {checkpoint} (step {state['step']}, policy version {state['policy_version']})")
    if not main:
        return follow(trainer, run_dir, model_path)
    return lead(trainer, ranks, stop, run_dir, model_path, state)


def lead(trainer: Trainer, ranks: Ranks, stop: StopSignals, run_dir: Path, model_path: str, state: dict | None) -> int:
    """Rank 0: the task source, the workers, evaluation, logging; tells the other ranks what to do."""
    rank0 = open_lead_run(trainer, ranks, stop, run_dir, model_path, state)
    try:
        start_workers(rank0)
        before = evaluate_before(rank0)
        for step in range(rank0.progress.last_step + 1, rank0.config.train.steps + 1):
            train_one_step(rank0, step)
        evaluate_after(rank0, before)
        return finish(rank0)
    except StopRequested:
        last_step = rank0.progress.last_step
        return stop_early(rank0, 130, f"\n[rl] stopping: saving a checkpoint of step {last_step}",
                          f"[rl] resume with: rl train --resume {run_dir}")
    except NoWorkersLeft as err:
        last_step = rank0.progress.last_step
        return stop_early(rank0, 3, f"[rl] error: {err}", f"[rl] saved a checkpoint of step {last_step}; "
                          f"start workers and resume with: rl train --resume {run_dir}")
    finally:
        rank0.close()


def start_workers(rank0: LeadRun) -> None:
    """Wait for the workers; on resume under a collective publication, give them the weights."""
    config, progress = rank0.config, rank0.progress
    rank0.coordinator.wait_for_workers(
        config.transport.wait_for_workers or max(1, config.rollout.num_workers), config.transport.worker_wait_s
    )
    if rank0.collective_publication and progress.version > 0:  # resumed: the workers joined without the weights
        with rank0.stop:
            rank0.ranks.tell(PUBLISH)
            rank0.coordinator.publish(progress.version, rank0.trainer.publication())


def train_one_step(rank0: LeadRun, step: int) -> None:
    """One step, phase by phase."""
    step_start = time.perf_counter()
    batch, source_before_next = collect(rank0, step)
    with rank0.stop:  # the update and the publication of its weights happen together or not at all
        train_metrics = train(rank0, step, batch)
        started = time.perf_counter()
        sync = publish(rank0) if train_metrics is not None else None
        record(rank0, step, batch, train_metrics, source_before_next, {"time/publish_seconds": time.perf_counter() - started})
    wait_for_workers_to_load(rank0, sync)
    metrics = finished_step_metrics(rank0.progress.unlogged[1], sync, rank0.coordinator, rank0.endpoint, step_start)
    report_worker_events(rank0, step)
    started = time.perf_counter()
    metrics.update(evaluate_during(rank0, step))
    metrics["time/eval_seconds"] = time.perf_counter() - started
    rank0.progress.unlogged = (step, metrics)  # a stop while checkpointing writes this line
    started = time.perf_counter()
    checkpoint(rank0, step)
    metrics["time/checkpoint_seconds"] = time.perf_counter() - started
    log_step(rank0, step, metrics)


# ------------------------------------------------------------------ the phases of a step


def collect(rank0: LeadRun, step: int) -> tuple[StepBatch, dict | None]:
    """The step's samples. With rollout.async the next step's prompts go out now, generated while
    this step trains; then also the source's state before that draw (a checkpoint of this step
    restarts from it)."""
    config, progress, source = rank0.config, rank0.progress, rank0.source
    if progress.next_job is None:
        progress.next_job = submit_step(rank0.coordinator, source, config, step, progress.version)
    job, progress.next_job = progress.next_job, None
    batch = collect_step(rank0.coordinator, source, config, step, progress.version, job)
    source_before_next = None
    if config.rollout.async_ and step < config.train.steps:
        source_before_next = source.state_dict()
        progress.next_job = submit_step(rank0.coordinator, source, config, step + 1, progress.version)
    return batch, source_before_next


def train(rank0: LeadRun, step: int, batch: StepBatch) -> dict[str, float] | None:
    """Every rank updates on the batch; None when nothing in it can be trained on."""
    rank0.ranks.tell(STEP, step)  # the step seeds each epoch's mini-batch order on every rank
    rank0.ranks.send_samples(batch.samples)
    train_metrics = rank0.trainer.train(batch.samples, step)
    if train_metrics is None:  # every group was dropped or filtered: nothing to learn from, the policy stays as it is
        say(f"[rl] step {step}: no trainable samples (all groups dropped or filtered); no update")
    return train_metrics


def publish(rank0: LeadRun) -> SyncStats:
    """The updated weights to every worker, as the next policy version."""
    rank0.progress.version += 1
    return rank0.coordinator.publish(rank0.progress.version, rank0.trainer.publication())


def wait_for_workers_to_load(rank0: LeadRun, sync: SyncStats | None) -> None:
    if sync is not None and not rank0.config.rollout.async_:  # async: the workers load it after their current prompts
        rank0.coordinator.wait_for_acks(rank0.progress.version, timeout_s=600)


def record(rank0: LeadRun, step: int, batch: StepBatch, train_metrics: dict[str, float] | None,
           source_before_next: dict | None, timings: dict[str, float]) -> None:
    """The step is done: its audit line, its completions, the progress a checkpoint records, its metrics so far."""
    trajectories, progress = batch.trained, rank0.progress
    rank0.audit.write(json.dumps({"step": step, "sample_ids": [t.meta.sample_id for t in trajectories],
                                 "task_ids": [t.meta.task_id for t in trajectories],
                                 "policy_versions": [t.meta.policy_version for t in trajectories]}) + "\n")
    rank0.audit.flush()
    if completions_due(step, rank0.config.logging.completions_every):
        rank0.monitor.log_completions(step, completion_rows(step, batch))
    progress.last_step = step
    progress.source_before_step = source_before_next or rank0.source.state_dict()  # a checkpoint now starts the next step
    # written even if a stop comes before the step's metrics line is complete
    progress.unlogged = (step, {**step_record(batch, train_metrics, rank0.source.curriculum, progress.version, rank0.config),
                                **timings})


def report_worker_events(rank0: LeadRun, step: int) -> None:
    for event in rank0.coordinator.drain_events():
        say(f"[rl] step {step}: {event}; its prompts went to the other workers")


def log_step(rank0: LeadRun, step: int, metrics: dict[str, float]) -> None:
    rank0.monitor.log(step, metrics)
    rank0.monitor.advance(metrics)
    rank0.progress.unlogged = None


def checkpoint(rank0: LeadRun, step: int) -> None:
    """Every checkpoint.every steps, and after the last one."""
    every = rank0.config.checkpoint.every
    if every and (step % every == 0 or step == rank0.config.train.steps):
        with rank0.stop:
            save_checkpoint_of(rank0, step)


# ------------------------------------------------------------------ the end of a run


def save_checkpoint_of(rank0: LeadRun, step: int) -> None:
    """A checkpoint of `step` (the last finished one) on every rank, unless it is saved already."""
    if (checkpoint_root(rank0.run_dir) / step_dir_name(step) / STATE_FILE).is_file():
        return  # already saved (a periodic save, then Ctrl-C); rank 0 decides for every rank
    rank0.ranks.tell(CHECKPOINT, step)
    state = {"policy_version": rank0.progress.version, "source": rank0.progress.source_before_step,
             "wandb_id": rank0.monitor.wandb_id}
    rank0.trainer.checkpoint(rank0.run_dir, step, state, rank0.model_path)


def finish(rank0: LeadRun) -> int:
    """Every rank saves the trained policy."""
    rank0.stop.critical = True
    rank0.ranks.tell(FINISH)
    final_dir = rank0.trainer.save_final(rank0.run_dir, rank0.model_path)
    say(f"[rl] saved the trained policy to {final_dir}")
    return 0


def stop_early(rank0: LeadRun, code: int, reason: str, saved: str) -> int:
    """Ctrl-C/SIGTERM or no workers left: write the finished step's metrics, checkpoint it, stop every rank."""
    rank0.stop.critical = True  # no second interrupt while saving
    progress = rank0.progress
    if progress.unlogged is not None:  # the step finished (and is in the checkpoint) but its metrics line was not written yet
        rank0.monitor.log(*progress.unlogged)
    say(reason)
    if progress.last_step > 0:
        save_checkpoint_of(rank0, progress.last_step)
        say(saved)
    rank0.ranks.tell(STOP, code)
    return code
