"""One training step on a batch: GRPO and its variants, or PPO with a critic, over DeepSpeed engines.

Shape of a step (`learner.plan` decides which micro-batch holds which samples, on which rank):
1. a no-grad pass over this rank's micro-batches when something needs the pre-update policy and
   the grad pass cannot give it: old logprobs for several updates per batch, reference logprobs
   (KL), the critic's old values and GAE advantages (PPO), the policy's logprobs for a KL penalty
   inside GAE's rewards;
2. `epochs` x `mini_batches` optimizer updates; each accumulates its micro-batches' gradients with
   the whole mini-batch's denominators, so the sum of the micro-batch losses is exactly the
   mini-batch loss whatever the micro-batch count, layout and rank count are. With several
   mini-batches each epoch slices the batch in its own seeded order (`learner.plan.epoch_plans`);
   step 1 then runs once per epoch, all before the first update, so every epoch's ratio is taken
   against the same pre-update policy.

Samples that cannot change the update are left out of every pass (`skip_zero_advantage`, the
default): those masked out of the loss, and, when the loss has no KL or entropy term and no critic,
those whose advantage is exactly 0 (every sample of a group whose rewards are all equal). They
still count in the denominators, so the update is the one the full pass would make; the
diagnostics (entropy, logprob_diff, clip fractions, KL) are means over the computed tokens.

With one update per batch the ratio's denominator is the grad pass's own detached logprobs (the
policy has not moved yet), also for truncated importance sampling: no extra forward pass is spent.
vLLM's `rollout_logprobs` are the sampler's, not the ratio's denominator; they enter only through
the truncated importance weight (rollout.async) and the `train/logprob_diff` metric.

Several learner ranks: every rank plans the same step and trains on its own micro-batches; a rank
with fewer runs copies weighted 0, so all ranks make the same number of forward/backward passes
(collectives in lockstep). DeepSpeed averages gradients over ranks, so each loss is scaled by
world_size to keep the sum. PPO's advantage whitening uses sums reduced over ranks, so it is the
whole batch's.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import Tensor

from learner.advantages import gae, token_level_rewards
from learner.batch import MicroBatch, TrainSample
from learner.critic import completion_values
from learner.diagnostics import advantage_and_value_sums, gae_metrics
from learner.logprobs import completion_logprobs, model_device
from learner.losses import (
    PolicyLossInputs,
    kl_estimate,
    policy_loss,
    truncated_is_weights,
    value_loss,
)
from learner.plan import Computed, Layout, MiniBatchPlan, epoch_plans

# Per-token diagnostics: reported as means over the computed tokens (the loss shares keep the full denominators).
DIAGNOSTICS = ("kl", "clip_frac", "clip_frac_low", "clip_frac_high", "entropy", "is_weight", "logprob_diff", "approx_kl")


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
    seed: int = 0  # with (step, epoch), the order in which each epoch takes the mini-batches
    skip_zero_advantage: bool = True  # leave out of the passes the samples that cannot change the update

    @property
    def updates(self) -> int:
        return self.epochs * self.mini_batches


@dataclass
class Prepared:
    """A micro-batch with what the no-grad pass computed for it (all (B, C) on its grid, None when not needed)."""

    mb: MicroBatch
    weight: float = 1.0  # 0 for the copies that keep ranks in lockstep
    old_logprobs: Tensor | None = None
    ref_logprobs: Tensor | None = None
    advantages: Tensor | None = None  # per token
    returns: Tensor | None = None
    old_values: Tensor | None = None


@dataclass
class PreparedMiniBatch:
    items: list[Prepared]
    num_tokens: int  # the whole mini-batch's (every rank's) loss tokens
    num_sequences: int
    computed_tokens: int = 0  # the loss tokens of its computed samples (every rank's)
    skipped: int = 0


def computed_samples(settings: StepSettings) -> Computed | None:
    """Which samples a pass must cover (None: all). One masked out of the loss adds nothing to any loss
    term; one whose advantage is exactly 0 adds nothing to the policy-gradient term, so it may be left
    out when there is no KL or entropy term and no critic (PPO's token advantages are never skipped)."""
    if not settings.skip_zero_advantage:
        return None
    every_advantage_counts = settings.gae or settings.kl_coef > 0 or settings.entropy_coef > 0
    return lambda s: s.in_loss and bool(s.completion_ids) and (every_advantage_counts or s.advantage != 0.0)


def train_step(
    engine, samples: list[TrainSample], settings: StepSettings, layout: Layout = Layout(), *, ref_model=None,
    critic=None, rank: int = 0, world_size: int = 1, step: int = 0,
) -> dict[str, float]:
    """Train on one batch of samples (this rank's share of it); return metrics averaged over its updates.

    `step` (the run's step) seeds, with `settings.seed`, each epoch's mini-batch order: every rank must pass the same.
    """
    if settings.kl_coef > 0 and ref_model is None:
        raise ValueError("kl_coef > 0 needs ref_model (learner.engine.build_reference_model)")
    if settings.gae and critic is None:
        raise ValueError("GAE advantages need a critic (learner.critic.build_critic_engine)")
    if sum(len(s.completion_ids) for s in samples if s.in_loss) == 0:
        raise ValueError("the batch has no completion tokens to train on")

    start = time.perf_counter()
    device = model_device(engine)
    plans = epoch_plans(samples, layout, settings.mini_batches, settings.epochs, seed=settings.seed, step=step,
                        rank=rank, world_size=world_size, computed=computed_samples(settings))
    prepared = [prepare(engine, plan, settings, ref_model, critic, world_size) for plan in plans]  # before any update
    lr = engine.get_lr()[0]  # the LR of this step's first update; the scheduler advances in engine.step()
    totals: dict[str, float] = defaultdict(float)
    totals["time/no_grad_seconds"] = clock(device) - start
    seen_tokens = 0
    grad_norms: list[float] = []
    diagnostic_sums: dict[str, float] = defaultdict(float)
    computed_tokens = 0
    for epoch in range(settings.epochs):
        for mini_batch in prepared[epoch % len(prepared)]:
            metrics, tokens, grad_norm = update(engine, mini_batch, settings, critic, world_size)
            for key, value in metrics.items():
                if key in DIAGNOSTICS:  # a share of the mini-batch's tokens: back to a sum
                    diagnostic_sums[key] += value * mini_batch.num_tokens
                else:
                    totals[key] += value if key.startswith("time/") else value / settings.updates
            computed_tokens += mini_batch.computed_tokens
            seen_tokens += tokens
            if grad_norm is not None:
                grad_norms.append(grad_norm)
    for key, value in diagnostic_sums.items():  # means over the computed tokens of every update (NaN: none computed)
        totals[key] = value / computed_tokens if computed_tokens else math.nan
    out = step_metrics(totals, settings, lr, grad_norms, seen_tokens / (time.perf_counter() - start), critic)
    out["train/skipped_frac"] = sum(mini.skipped for mini in prepared[0]) / len(samples)
    if settings.gae:
        out.update(gae_diagnostics([item for mini in prepared[0] for item in mini.items], world_size))
    return out


def step_metrics(totals: dict[str, float], settings: StepSettings, lr: float, grad_norms: list[float],
                 tokens_per_s: float, critic) -> dict[str, float]:
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
        "train/learner_tokens_per_s": tokens_per_s,  # this rank: the tokens its passes ran over (a shared prompt once)
        "train/logprob_diff": totals["logprob_diff"],
    }
    for key in ("entropy", "is_weight", "approx_kl"):
        if key in totals:
            out[f"train/{key}"] = totals[key]
    out.update({key: value for key, value in totals.items() if key.startswith("time/")})  # this rank's phases
    if critic is not None:
        out.update({"loss/value": totals["loss/value"], "critic/value_clip_frac": totals["value_clip_frac"],
                    "critic/value_mean": totals["value_mean"], "critic/return_mean": totals["return_mean"],
                    "critic/lr": float(critic.get_lr()[0])})
    return out


def prepare(engine, plans: list[MiniBatchPlan], settings: StepSettings, ref_model, critic, world_size: int) -> list[PreparedMiniBatch]:
    """This rank's micro-batches with their no-grad quantities, grouped as they will be trained."""
    kl_in_rewards = settings.gae and settings.kl_in == "reward" and settings.kl_coef > 0
    need_old = settings.updates > 1 or kl_in_rewards  # one update: the grad pass's detached logprobs are the old ones
    need_ref = settings.kl_coef > 0
    out = []
    for plan in plans:
        items = []
        for mb, weight in zip(plan.micro_batches, plan.weights):
            item = Prepared(mb, weight)
            with torch.no_grad():
                if need_old:
                    item.old_logprobs = completion_logprobs(engine, mb, settings.temperature)
                if need_ref:
                    item.ref_logprobs = completion_logprobs(ref_model, mb, settings.temperature)
                if settings.gae:
                    item.old_values = completion_values(critic, mb)
            items.append(item)
        out.append(PreparedMiniBatch(items, plan.num_tokens, plan.num_sequences, plan.computed_tokens, plan.skipped))
    if settings.gae:
        attach_gae([item for mini in out for item in mini.items], settings, world_size)
    return out


def attach_gae(items: list[Prepared], settings: StepSettings, world_size: int) -> None:
    """Per-token advantages and returns from the critic's old values (PPO), whitened over the whole batch."""
    for item in items:
        mask = item.mb.loss_mask.to(item.old_values.device)
        kl = None
        if settings.kl_in == "reward" and settings.kl_coef > 0:
            kl = kl_estimate(item.old_logprobs, item.ref_logprobs, settings.kl_estimator)
        rewards = token_level_rewards(item.mb.scores.to(mask.device), mask, kl, settings.kl_coef)
        item.advantages, item.returns = gae(rewards, item.old_values, mask, settings.gamma, settings.lam)
    if settings.whiten_advantages:
        # one mean and (Bessel) std over every completion token of the batch: sums over this rank's
        # micro-batches (the lockstep copies left out), then over the ranks
        count = total = squares = 0.0
        for item in items:
            if item.weight > 0:
                values = item.advantages[item.mb.loss_mask.to(item.advantages.device) > 0].double()
                count, total, squares = count + values.numel(), total + values.sum().item(), squares + (values**2).sum().item()
        count, total, squares = (_global_sum(x, world_size) for x in (count, total, squares))
        if count > 1:
            mean = total / count
            std = max((squares - count * mean * mean) / (count - 1), 0.0) ** 0.5
            for item in items:
                mask = item.mb.loss_mask.to(item.advantages.device) > 0
                item.advantages = torch.where(mask, (item.advantages - mean) / (std + 1e-8), 0.0)


def update(engine, mini_batch: PreparedMiniBatch, settings: StepSettings, critic, world_size: int):
    """One optimizer step of the policy (and the critic) over this rank's share of a mini-batch."""
    num_tokens, num_sequences = mini_batch.num_tokens, mini_batch.num_sequences
    totals: dict[str, float] = defaultdict(float)
    phases: dict[str, float] = defaultdict(float)  # this rank's wall time, not reduced over ranks
    tokens = 0
    if num_tokens == 0:
        return totals, tokens, None
    grad_norm, device = None, model_device(engine)
    for i, item in enumerate(mini_batch.items):
        is_last = i == len(mini_batch.items) - 1
        # The boundary is set by hand, so any number of micro-batches makes exactly one optimizer step.
        engine.set_gradient_accumulation_boundary(is_last)
        started = time.perf_counter()
        loss, metrics = policy_micro_batch_loss(engine, item, settings, num_tokens, num_sequences)
        # `loss` is already this micro-batch's share of the mini-batch loss: no division by the
        # accumulation steps, and a factor world_size against DeepSpeed's average over ranks.
        engine.backward(loss * (item.weight * world_size), scale_wrt_gas=False)
        if is_last and not engine.zero_optimization():
            grad_norm = module_grad_norm(engine.module)  # DeepSpeed reports no norm without ZeRO
        backward_done = clock(device)
        engine.step()
        phases["time/optimizer_seconds"] += clock(device) - backward_done
        phases["time/forward_backward_seconds"] += backward_done - started
        if critic is not None:
            critic.set_gradient_accumulation_boundary(is_last)
            started = time.perf_counter()
            v_loss, v_metrics = critic_micro_batch_loss(critic, item, settings, num_tokens)
            critic.backward(v_loss * (item.weight * world_size), scale_wrt_gas=False)
            backward_done = clock(device)
            critic.step()
            phases["time/optimizer_seconds"] += clock(device) - backward_done
            phases["time/forward_backward_seconds"] += backward_done - started
            metrics.update(v_metrics)
        for key, value in metrics.items():
            totals[key] += value * item.weight
        totals["loss/total"] += loss.item() * item.weight
        tokens += item.mb.num_input_tokens
    if engine.get_global_grad_norm() is not None:
        grad_norm = float(engine.get_global_grad_norm())
    return {**{k: _global_sum(v, world_size) for k, v in totals.items()}, **phases}, tokens, grad_norm


def policy_micro_batch_loss(model, item: Prepared, settings: StepSettings, num_tokens: float, num_sequences: float):
    """This micro-batch's share of the mini-batch's policy loss (with grad), and its metrics."""
    mb, device = item.mb, model_device(model)
    loss_mask = mb.loss_mask.to(device)  # (B, C)
    # the entropy always: a diagnostic from the logits this pass has anyway (with grad only for the bonus)
    logprobs, entropy = completion_logprobs(model, mb, settings.temperature, with_entropy=True,
                                            entropy_grad=settings.entropy_coef > 0)
    old_logprobs = item.old_logprobs if item.old_logprobs is not None else logprobs.detach()
    rollout_logprobs = mb.rollout_logprobs.to(device)
    if item.advantages is not None:
        advantages = item.advantages.to(device)
    else:
        advantages = mb.advantages.to(device).unsqueeze(1) * loss_mask  # outcome advantage on every token
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
    if item.old_logprobs is not None:  # several updates per batch: how far this update's policy moved from the old one
        approx_kl = kl_estimate(item.old_logprobs, logprobs.detach(), "k3")  # KL(old || new) on tokens sampled from old
        metrics["approx_kl"] = torch.where(loss_mask > 0, approx_kl, 0.0).sum().item() / num_tokens
    if settings.kl_in == "reward" and item.ref_logprobs is not None:  # report the KL that shaped the rewards
        kl = kl_estimate(logprobs.detach(), item.ref_logprobs, settings.kl_estimator)
        metrics["kl"] = torch.where(loss_mask > 0, kl, 0.0).sum().item() / num_tokens
    return loss, metrics


def critic_micro_batch_loss(critic, item: Prepared, settings: StepSettings, num_tokens: float):
    values = completion_values(critic, item.mb)  # (B, C)
    mask = item.mb.loss_mask.to(values.device)
    loss, metrics = value_loss(values, item.old_values, item.returns, mask, clip=settings.value_clip, num_tokens=num_tokens)
    metrics["return_mean"] = torch.where(mask > 0, item.returns, 0.0).sum().item() / num_tokens
    return loss, metrics


def clock(device: torch.device) -> float:
    """perf_counter once the device's queued work is done (CUDA runs asynchronously), so phases are timed honestly."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def gae_diagnostics(items: list[Prepared], world_size: int) -> dict[str, float]:
    """The whitened token advantages PPO trained with (min, mean, max) and the critic's explained variance,
    1 - Var(R - V_old) / Var(R), over every completion token of the batch (every rank's, lockstep copies left out)."""
    sums = torch.zeros(6, dtype=torch.float64)
    low, high = math.inf, -math.inf
    for item in items:
        if item.weight == 0:
            continue
        mask = item.mb.loss_mask.to(item.advantages.device) > 0
        sums += advantage_and_value_sums(item.advantages[mask], item.returns[mask], item.old_values[mask])
        if mask.any():
            low, high = min(low, item.advantages[mask].min().item()), max(high, item.advantages[mask].max().item())
    sums = torch.tensor([_global_sum(x, world_size) for x in sums.tolist()], dtype=torch.float64)
    low, high = -_global_max(-low, world_size), _global_max(high, world_size)
    return gae_metrics(sums, low, high)


def _global_max(value: float, world_size: int) -> float:
    if world_size == 1:
        return value
    from learner.distributed import all_reduce_max

    return all_reduce_max(float(value))


def _global_sum(value: float, world_size: int) -> float:
    if world_size == 1:
        return value
    from learner.distributed import all_reduce_sum

    return all_reduce_sum(float(value))


def module_grad_norm(module: torch.nn.Module) -> float:
    grads = [p.grad.detach().float() for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
