"""Rank 0's parts of a training run (the task source, the workers' endpoint and coordinator, the
monitor, the audit file) and where the run stands: what every phase of a step reads and moves on."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from transformers import AutoTokenizer

from envs.source import TASKS_FILE, TaskSource, build_task_source, reward_sets
from learner.collect import SubmittedStep
from learner.distributed import world_size
from learner.ranks import Ranks
from learner.stop import StopSignals
from learner.trainer import Trainer
from rl.config import Config
from rl.coordinator import Coordinator
from rl.monitor import COMPLETIONS_FILE, Monitor, truncate_after
from rl.prompts import prompt_lengths, render_prompts
from rl.replies import receive_limits
from rl.transport import LearnerEndpoint
from rl.wire import Welcome

log = logging.getLogger("learner")


@dataclass
class Progress:
    """Where the run stands; what a checkpoint or a stop needs."""

    last_step: int  # the last step whose update (or skip) is complete
    version: int  # the newest policy version
    source_before_step: dict  # the task source as a checkpoint of `last_step` records it
    wandb_id: str | None = None  # the resumed run's W&B run id
    unlogged: tuple[int, dict] | None = None  # a finished step whose metrics line is not written yet
    next_job: SubmittedStep | None = None  # async: the next step's prompts, already at the workers


@dataclass
class LeadRun:
    """Rank 0's parts of the run, set up once; the phases of a step take it."""

    config: Config
    trainer: Trainer
    ranks: Ranks
    stop: StopSignals
    run_dir: Path
    model_path: str
    source: TaskSource
    progress: Progress
    endpoint: LearnerEndpoint
    coordinator: Coordinator
    collective_publication: bool  # a publication needs every learner rank (ZeRO-3 on several ranks)
    monitor: Monitor
    audit: IO[str]  # trained_samples.jsonl: which samples each step trained on

    def close(self) -> None:
        self.stop.critical = True  # no second interrupt while closing
        self.audit.close()
        self.coordinator.shutdown("training finished")
        self.monitor.close()
        self.endpoint.close()


def open_lead_run(trainer: Trainer, ranks: Ranks, stop: StopSignals, run_dir: Path, model_path: str,
                  state: dict | None) -> LeadRun:
    """The task source (restored from a checkpoint's `state`), the learner's endpoint, the monitor."""
    config, engine = trainer.config, trainer.engine
    source = build_task_source(config, run_dir / TASKS_FILE)  # the tasks `rl train` built and checked before starting us
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    source.drop_overlong(lambda tasks: prompt_lengths(tokenizer, tasks), config.prompt_token_limit())
    progress = resumed_progress(source, state, run_dir)
    # Several ranks under ZeRO-3: a publication is collective, so a worker that joins mid-run waits for the next one.
    collective_publication = ranks.multi and engine.zero_optimization_partition_weights()

    limits = receive_limits(config, held_out_tasks=len(source.held_out()))
    endpoint = LearnerEndpoint(config.transport.host, config.transport.port, curve_keys=config.transport.curve_keys,
                               allow_insecure=config.transport.allow_insecure_network, limits=limits)
    coordinator = Coordinator(
        endpoint, lambda wid: welcome(config, model_path, run_dir, wid), lambda: (progress.version, trainer.publication()),
        heartbeat_timeout_s=config.transport.heartbeat_timeout_s, no_workers_wait_s=config.transport.no_workers_wait_s,
        vocab_size=engine.module.config.vocab_size, backup_after=config.rollout.backup_after,
        publish_on_join=not collective_publication, render_prompts=lambda tasks: render_prompts(tokenizer, tasks),
    )
    (run_dir / "learner_address").write_text(endpoint.address)
    log.info("learner listening on %s (%s; messages up to %.0f MiB, %d queued per connection); %d learner rank(s), "
             "ZeRO stage %d", endpoint.address, endpoint.security_description, limits.max_message_bytes / 2**20,
             limits.receive_hwm, world_size(), engine.zero_optimization_stage())  # the stage it runs (rl.devices.effective_zero_stage)

    monitor = Monitor(config, run_dir, config.train.steps, initial_step=progress.last_step,
                      resumed_from=progress.wandb_id)
    audit = (run_dir / "trained_samples.jsonl").open("a")
    return LeadRun(config, trainer, ranks, stop, run_dir, model_path, source, progress, endpoint, coordinator,
                   collective_publication, monitor, audit)


def resumed_progress(source: TaskSource, state: dict | None, run_dir: Path) -> Progress:
    """Resume: sampling position and counters as they were after the checkpoint's step."""
    done_step, version, wandb_id = 0, 0, None
    if state is not None:
        done_step, version, wandb_id = state["step"], state["policy_version"], state.get("wandb_id")
        source.load_state_dict(state["source"])
        for name in ("metrics.jsonl", "trained_samples.jsonl", COMPLETIONS_FILE):  # each step's lines once after the resume
            truncate_after(run_dir / name, done_step)
    # source_before_step: what a checkpoint of the last finished step records
    return Progress(last_step=done_step, version=version, source_before_step=source.state_dict(), wandb_id=wandb_id)


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
