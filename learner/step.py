"""One training step on a batch: GRPO and its variants, or PPO with a critic, over DeepSpeed engines.

Shape of a step:
1. a no-grad pass over the batch when something needs the pre-update policy: old logprobs (several
   updates per batch, or truncated importance sampling), reference logprobs (KL), the critic's old
   values and GAE advantages (PPO);
2. `epochs` x `mini_batches` optimizer updates; each accumulates its micro-batches' gradients with
   the whole mini-batch's denominators, so the sum of the micro-batch losses is exactly the
   mini-batch loss whatever the micro-batch count (and rank count) is.

With one update per batch and no importance sampling the ratio is 1 (old = current, detached): only
the advantage-weighted logprob gradient remains and no extra forward pass is spent. vLLM's
`rollout_logprobs` are the sampler's, not the ratio's denominator; they enter only through the
truncated importance weight (rollout.async) and the `train/logprob_diff` metric.

Several learner ranks: every rank holds the whole batch's micro-batches (so every rank computes
the same denominators) and trains on every world_size-th one; a rank with one fewer runs a copy
weighted 0, so all ranks make the same number of forward/backward passes (collectives in lockstep).
DeepSpeed averages gradients over ranks, so each loss is scaled by world_size to keep the sum.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import Tensor

from learner.advantages import gae, token_level_rewards
from learner.batch import MicroBatch
from learner.logprobs import token_logprobs
from learner.losses import (
    PolicyLossInputs,
    kl_estimate,
    policy_loss,
    truncated_is_weights,
    value_loss,
)
from rl.coordinator import split_evenly as split_chunks


@dataclass(frozen=True)
class StepSettings:
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    kl_in: str = "loss"  # "loss" or "reward" (per-token penalty inside GAE's rewards)
    entropy_coef: float = 0.0
    loss_agg: str = "token_mean"
    length_norm: float | None = None
    temperature: float = 1.0
    tis_cap: float | None = None  # truncated importance sampling against the sampler's logprobs (async)
    epochs: int = 1
    mini_batches: int = 1
    gae: bool = False  # PPO: token advantages from the critic
    gamma: float = 1.0
    lam: float = 0.95
    value_clip: float | None = 0.2
    whiten_advantages: bool = True

    @property
    def updates(self) -> int:
        return self.epochs * self.mini_batches


@dataclass
class Prepared:
    """A micro-batch with what the no-grad pass computed for it (all (B, L-1), None when not needed)."""

    mb: MicroBatch
    weight: float = 1.0  # 0 for the padding copies that keep ranks in lockstep
    old_logprobs: Tensor | None = None
    ref_logprobs: Tensor | None = None
    advantages: Tensor | None = None  # per token
    returns: Tensor | None = None
    old_values: Tensor | None = None


def train_step(
    engine, micro_batches: list[MicroBatch], settings: StepSettings, *, ref_model=None, critic=None,
    rank: int = 0, world_size: int = 1,
) -> dict[str, float]:
    """Train on one batch (all of its micro-batches, in order); return metrics averaged over its updates."""
    if not micro_batches:
        raise ValueError("train_step needs at least one micro-batch")
    if settings.kl_coef > 0 and ref_model is None:
        raise ValueError("kl_coef > 0 needs ref_model (learner.engine.build_reference_model)")
    if settings.gae and critic is None:
        raise ValueError("GAE advantages need a critic (learner.critic.build_critic_engine)")
    if sum(mb.num_loss_tokens for mb in micro_batches) == 0:
        raise ValueError("the batch has no completion tokens to train on")

    start = time.perf_counter()
    prepared = prepare(engine, micro_batches, settings, ref_model, critic, rank, world_size)
    lr = engine.get_lr()[0]  # the LR of this step's first update; the scheduler advances in engine.step()
    totals: dict[str, float] = defaultdict(float)
    seen_tokens = 0
    grad_norms: list[float] = []
    for _ in range(settings.epochs):
        for mini_batch in prepared:
            metrics, tokens, grad_norm = update(engine, mini_batch, settings, critic, rank, world_size)
            for key, value in metrics.items():
                totals[key] += value / settings.updates
            seen_tokens += tokens
            if grad_norm is not None:
                grad_norms.append(grad_norm)
    elapsed = time.perf_counter() - start

    out = {
        "loss/total": totals["loss/total"],
        "loss/pg": totals["loss/pg"],
        "loss/kl": totals["loss/kl"],
        "loss/entropy": totals["loss/entropy"],
        "train/kl": totals["kl"],
        "train/clip_frac": totals["clip_frac"],
        "train/clip_frac_low": totals["clip_frac_low"],
        "train/clip_frac_high": totals["clip_frac_high"],
        "train/grad_norm": grad_norms[-1] if grad_norms else float("nan"),  # of the last update, before clipping
        "train/lr": float(lr),
        "train/updates": float(settings.updates),
        "train/learner_tokens_per_s": seen_tokens / elapsed,  # this rank: prompt + completion tokens, all passes
        "train/logprob_diff": totals["logprob_diff"],
    }
    for key in ("entropy", "is_weight"):
        if key in totals:
            out[f"train/{key}"] = totals[key]
    if critic is not None:
        out.update({"loss/value": totals["loss/value"], "critic/value_clip_frac": totals["value_clip_frac"],
                    "critic/value_mean": totals["value_mean"], "critic/return_mean": totals["return_mean"],
                    "critic/lr": float(critic.get_lr()[0])})
    return out


def prepare(engine, micro_batches, settings: StepSettings, ref_model, critic, rank: int, world_size: int) -> list[list[Prepared]]:
    """This rank's micro-batches with their no-grad quantities, grouped as they will be trained."""
    need_old = settings.updates > 1 or settings.tis_cap is not None
    need_ref = settings.kl_coef > 0
    items = []
    for mb in micro_batches:
        item = Prepared(mb)
        if need_old or need_ref or settings.gae:
            input_ids, attention_mask = mb.input_ids.to(engine.device), mb.attention_mask.to(engine.device)
            with torch.no_grad():
                if need_old or (settings.gae and settings.kl_in == "reward" and need_ref):
                    item.old_logprobs = token_logprobs(engine, input_ids, attention_mask, settings.temperature)
                if need_ref:
                    item.ref_logprobs = token_logprobs(ref_model, input_ids, attention_mask, settings.temperature)
                if settings.gae:
                    item.old_values = critic(input_ids=input_ids, attention_mask=attention_mask)[:, :-1].detach()
        items.append(item)
    if settings.gae:
        attach_gae(items, settings)
    # every rank knows every micro-batch; it trains on its share of each mini-batch
    return [own_share(mini, rank, world_size) for mini in split_evenly(items, settings.mini_batches)]


def attach_gae(items: list[Prepared], settings: StepSettings) -> None:
    """Per-token advantages and returns from the critic's old values (PPO), whitened over the batch."""
    for item in items:
        mask = item.mb.loss_mask.to(item.old_values.device)
        kl = None
        if settings.kl_in == "reward" and settings.kl_coef > 0:
            kl = kl_estimate(item.old_logprobs, item.ref_logprobs, settings.kl_estimator)
        rewards = token_level_rewards(item.mb.scores.to(mask.device), mask, kl, settings.kl_coef)
        item.advantages, item.returns = gae(rewards, item.old_values, mask, settings.gamma, settings.lam)
    if settings.whiten_advantages:
        # one mean and std over every completion token of the batch (all micro-batches)
        flat = torch.cat([item.advantages[item.mb.loss_mask.to(item.advantages.device) > 0] for item in items])
        if flat.numel() > 1:
            mean, std = flat.mean(), flat.std()
            for item in items:
                mask = item.mb.loss_mask.to(item.advantages.device) > 0
                item.advantages = torch.where(mask, (item.advantages - mean) / (std + 1e-8), 0.0)


def update(engine, mini_batch: list[Prepared], settings: StepSettings, critic, rank: int, world_size: int):
    """One optimizer step of the policy (and the critic) over this rank's share of a mini-batch."""
    # Denominators of the WHOLE mini-batch (every rank's share; padding copies weigh 0).
    all_items = [item for item in mini_batch if item.weight > 0]
    num_tokens = _global_sum(sum(item.mb.num_loss_tokens for item in all_items), world_size)
    num_sequences = _global_sum(sum(int((item.mb.loss_mask.sum(dim=1) > 0).sum()) for item in all_items), world_size)
    totals: dict[str, float] = defaultdict(float)
    tokens = 0
    if num_tokens == 0:
        return totals, tokens, None
    for i, item in enumerate(mini_batch):
        is_last = i == len(mini_batch) - 1
        # The boundary is set by hand, so any number of micro-batches makes exactly one optimizer step.
        engine.set_gradient_accumulation_boundary(is_last)
        loss, metrics = policy_micro_batch_loss(engine, item, settings, num_tokens, num_sequences)
        # `loss` is already this micro-batch's share of the mini-batch loss: no division by the
        # accumulation steps, and a factor world_size against DeepSpeed's average over ranks.
        engine.backward(loss * (item.weight * world_size), scale_wrt_gas=False)
        grad_norm = None
        if is_last and not engine.zero_optimization():
            grad_norm = module_grad_norm(engine.module)  # DeepSpeed reports no norm without ZeRO
        engine.step()
        if critic is not None:
            critic.set_gradient_accumulation_boundary(is_last)
            v_loss, v_metrics = critic_micro_batch_loss(critic, item, settings, num_tokens)
            critic.backward(v_loss * (item.weight * world_size), scale_wrt_gas=False)
            critic.step()
            metrics.update(v_metrics)
        for key, value in metrics.items():
            totals[key] += value * item.weight
        totals["loss/total"] += loss.item() * item.weight
        tokens += int(item.mb.attention_mask.sum().item())
    if engine.get_global_grad_norm() is not None:
        grad_norm = float(engine.get_global_grad_norm())
    return {k: _global_sum(v, world_size) for k, v in totals.items()}, tokens, grad_norm


def policy_micro_batch_loss(engine, item: Prepared, settings: StepSettings, num_tokens: float, num_sequences: float):
    mb = item.mb
    input_ids, attention_mask = mb.input_ids.to(engine.device), mb.attention_mask.to(engine.device)
    loss_mask = mb.loss_mask.to(engine.device)  # (B, L-1)
    want_entropy = settings.entropy_coef > 0
    logprobs, entropy = token_logprobs_and_entropy(engine, input_ids, attention_mask, settings.temperature, want_entropy)
    old_logprobs = item.old_logprobs if item.old_logprobs is not None else logprobs.detach()
    rollout_logprobs = mb.rollout_logprobs.to(engine.device)
    if item.advantages is not None:
        advantages = item.advantages.to(engine.device)
    else:
        advantages = mb.advantages.to(engine.device).unsqueeze(1) * loss_mask  # outcome advantage on every token
    is_weights = None
    if settings.tis_cap is not None:
        is_weights = truncated_is_weights(old_logprobs, rollout_logprobs, loss_mask, settings.tis_cap)
    inputs = PolicyLossInputs(
        logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=loss_mask,
        ref_logprobs=item.ref_logprobs if settings.kl_in == "loss" else None, is_weights=is_weights, entropy=entropy,
    )
    loss, metrics = policy_loss(
        inputs, clip_low=settings.clip_low, clip_high=settings.clip_high,
        kl_coef=settings.kl_coef if settings.kl_in == "loss" else 0.0, kl_estimator=settings.kl_estimator,
        entropy_coef=settings.entropy_coef, agg=settings.loss_agg, num_tokens=num_tokens, num_sequences=num_sequences,
        length_norm=settings.length_norm,
    )
    gap = torch.where(loss_mask > 0, (rollout_logprobs - logprobs.detach()).abs(), 0.0)
    metrics["logprob_diff"] = gap.sum().item() / num_tokens
    if settings.kl_in == "reward" and item.ref_logprobs is not None:  # report the KL that shaped the rewards
        kl = kl_estimate(logprobs.detach(), item.ref_logprobs, settings.kl_estimator)
        metrics["kl"] = torch.where(loss_mask > 0, kl, 0.0).sum().item() / num_tokens
    return loss, metrics


def critic_micro_batch_loss(critic, item: Prepared, settings: StepSettings, num_tokens: float):
    mb = item.mb
    values = critic(input_ids=mb.input_ids.to(critic.device), attention_mask=mb.attention_mask.to(critic.device))[:, :-1]
    mask = mb.loss_mask.to(values.device)
    loss, metrics = value_loss(values, item.old_values, item.returns, mask, clip=settings.value_clip, num_tokens=num_tokens)
    metrics["return_mean"] = torch.where(mask > 0, item.returns, 0.0).sum().item() / num_tokens
    return loss, metrics


def token_logprobs_and_entropy(engine, input_ids, attention_mask, temperature: float, with_entropy: bool):
    if not with_entropy:
        return token_logprobs(engine, input_ids, attention_mask, temperature), None
    return token_logprobs(engine, input_ids, attention_mask, temperature, return_entropy=True)


def own_share(items: list[Prepared], rank: int, world_size: int) -> list[Prepared]:
    """Every world_size-th item from `rank`, padded with 0-weight copies to the same count on every rank."""
    if world_size == 1:
        return items
    count = -(-len(items) // world_size)
    mine = items[rank::world_size]
    while len(mine) < count:
        mine.append(Prepared(**{**items[0].__dict__, "weight": 0.0}))
    return mine


def split_evenly(items: list, parts: int) -> list[list]:
    """`parts` consecutive slices whose sizes differ by at most one (fewer if there are fewer items)."""
    return [chunk for chunk in split_chunks(items, max(1, parts)) if chunk]


def _global_sum(value: float, world_size: int) -> float:
    if world_size == 1:
        return value
    from learner.distributed import all_reduce_sum

    return all_reduce_sum(float(value))


def first_loss_column(loss_mask: torch.Tensor) -> int:
    """The first column any row of the micro-batch trains on; logits before it are never needed."""
    columns = loss_mask.any(dim=0).nonzero()
    return int(columns[0]) if len(columns) else 0


def module_grad_norm(module: torch.nn.Module) -> float:
    grads = [p.grad.detach().float() for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()


def grpo_step(
    engine, micro_batches: list[MicroBatch], *, clip_eps: float, kl_coef: float, temperature: float, ref_model=None
) -> dict[str, float]:
    """GRPO with token-mean aggregation and a k3 KL in the loss: `train_step` with those settings."""
    settings = StepSettings(clip_low=clip_eps, clip_high=clip_eps, kl_coef=kl_coef, temperature=temperature)
    return train_step(engine, micro_batches, settings, ref_model=ref_model)
