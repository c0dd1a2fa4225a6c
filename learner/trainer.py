"""What every learner rank does in lockstep (train on a batch, publish weights, checkpoint, save),
and building it from the run's config."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from learner.batch import TrainSample
from learner.checkpoint import save_checkpoint
from learner.distributed import rank, world_size
from learner.engine import (
    Publication,
    build_policy_engine,
    build_reference_model,
    iter_publish_tensors,
    resolve_rollout_dtype,
    save_hf,
)
from learner.logprobs import model_device
from learner.plan import Layout, choose_layout, default_max_tokens
from learner.step import StepSettings, train_step
from rl.config import Config

ROLLOUT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Trainer:
    """What every rank does in lockstep: train on a batch, publish (gather) weights, checkpoint, save."""

    def __init__(self, config: Config, engine, critic, ref_model, settings: StepSettings, pad_id: int,
                 rollout_dtype: torch.dtype, bucket_bytes: int):
        self.config, self.engine, self.critic, self.ref_model = config, engine, critic, ref_model
        self.settings, self.rollout_dtype, self.bucket_bytes = settings, rollout_dtype, bucket_bytes
        t = config.train
        budget = t.max_tokens_per_micro_batch or default_max_tokens(model_device(engine).type)
        self.layout = choose_layout(Layout(t.packing, budget, t.micro_batch_size, pad_id),
                                    {"policy": engine, "critic": critic, "reference model": ref_model})

    def train(self, samples: list[TrainSample], step: int) -> dict[str, float] | None:
        """One update on the batch of `step`; None (and no update) when nothing in it can be trained on."""
        if not any(s.in_loss and s.completion_ids for s in samples):
            return None
        return train_step(self.engine, samples, self.settings, self.layout, ref_model=self.ref_model, critic=self.critic,
                          rank=rank(), world_size=world_size(), step=step)

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


def build_trainer(config: Config, model_path: str) -> Trainer:
    """The engines (policy; reference model with a KL term; critic under GAE) on this rank."""
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
    return Trainer(config, engine, critic, ref_model, step_settings(config), pad_token_id(model_path),
                   ROLLOUT_DTYPES[resolve_rollout_dtype(config.rollout.dtype)], config.rollout.bucket_mb * 2**20)


def step_settings(config: Config) -> StepSettings:
    t, c = config.train, config.critic
    return StepSettings(
        clip_low=t.clip_eps_low or t.clip_eps, clip_high=t.clip_eps_high or t.clip_eps, kl_coef=t.kl_coef,
        kl_estimator=t.kl_estimator, kl_in=t.kl_in, entropy_coef=t.entropy_coef, loss_agg=t.loss_agg,
        length_norm=float(t.length_norm or config.rollout.max_new_tokens), temperature=config.rollout.temperature or 1.0,
        tis_cap=t.tis_cap if config.rollout.async_ else None, epochs=t.epochs, mini_batches=t.mini_batches,
        gae=t.advantage == "gae", gamma=c.gamma, lam=c.lam, value_clip=c.value_clip, whiten_advantages=c.whiten_advantages,
        seed=config.run.seed, skip_zero_advantage=t.skip_zero_advantage,
    )


def pad_token_id(model_path: str) -> int:
    config = json.loads((Path(model_path) / "config.json").read_text())
    pad = config.get("pad_token_id")
    if pad is None:
        eos = config.get("eos_token_id", 0)
        pad = eos[0] if isinstance(eos, list) else eos
    return int(pad)
