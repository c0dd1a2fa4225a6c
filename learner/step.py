"""One GRPO optimizer step over a batch of micro-batches, with exact token-mean gradient accumulation.

One update per batch (on-policy): old_logprobs = learner_logprobs.detach(), so the ratio is 1 and
only the advantage-weighted logprob gradient remains; clipping becomes active only if the loop
ever takes several updates per batch. vLLM's `rollout_logprobs` are not the ratio's denominator:
they differ from the learner's by numerics, and `train/logprob_diff` reports that gap.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch

from learner.batch import MicroBatch
from learner.logprobs import token_logprobs
from learner.losses import GRPOLossInputs, grpo_loss


def grpo_step(
    engine, micro_batches: list[MicroBatch], *, clip_eps: float, kl_coef: float, temperature: float, ref_model=None
) -> dict[str, float]:
    """Accumulate the batch's GRPO gradient over `micro_batches`, take one optimizer step, return metrics."""
    if not micro_batches:
        raise ValueError("grpo_step needs at least one micro-batch")
    if kl_coef > 0 and ref_model is None:
        raise ValueError("kl_coef > 0 needs ref_model (learner.engine.build_reference_model)")
    num_tokens = sum(mb.num_loss_tokens for mb in micro_batches)  # completion tokens of the WHOLE batch
    if num_tokens == 0:
        raise ValueError("the batch has no completion tokens to train on")

    lr = engine.get_lr()[0]  # the LR this step's update uses; the scheduler advances inside engine.step()
    totals: dict[str, float] = defaultdict(float)
    seen_tokens, grad_norm = 0, None
    start = time.perf_counter()
    for i, mb in enumerate(micro_batches):
        is_last = i == len(micro_batches) - 1
        # The boundary is set by hand, so any number of micro-batches (e.g. after stale samples
        # were dropped) makes exactly one optimizer step, whatever grad_accum_steps the engine has.
        engine.set_gradient_accumulation_boundary(is_last)
        loss, metrics = micro_batch_loss(
            engine, mb, clip_eps=clip_eps, kl_coef=kl_coef, temperature=temperature, ref_model=ref_model, num_tokens=num_tokens
        )
        # `loss` is already this micro-batch's share of the batch token mean; DeepSpeed's default
        # division by gradient_accumulation_steps would turn the sum into a mean of micro-batch means.
        engine.backward(loss, scale_wrt_gas=False)
        if is_last and not engine.zero_optimization():
            grad_norm = module_grad_norm(engine.module)  # DeepSpeed reports no norm without ZeRO; grads are zeroed in step()
        engine.step()

        for key, value in metrics.items():
            totals[key] += value
        totals["loss/total"] += loss.item()
        seen_tokens += int(mb.attention_mask.sum().item())
    elapsed = time.perf_counter() - start

    if engine.get_global_grad_norm() is not None:
        grad_norm = float(engine.get_global_grad_norm())
    return {
        "loss/total": totals["loss/total"],
        "loss/pg": totals["loss/pg"],
        "loss/kl": totals["loss/kl"],
        "train/kl": totals["kl"],
        "train/clip_frac": totals["clip_frac"],
        "train/grad_norm": float("nan") if grad_norm is None else grad_norm,  # before clipping
        "train/lr": float(lr),
        "train/learner_tokens_per_s": seen_tokens / elapsed,  # prompt + completion tokens, forward + backward
        "train/logprob_diff": totals["logprob_diff"],
    }


def micro_batch_loss(engine, mb: MicroBatch, *, clip_eps: float, kl_coef: float, temperature: float, ref_model, num_tokens: int):
    """Forward one micro-batch; return its share of the batch loss and its metrics (incl. the vLLM-learner logprob gap)."""
    input_ids, attention_mask = mb.input_ids.to(engine.device), mb.attention_mask.to(engine.device)
    loss_mask = mb.loss_mask.to(engine.device)  # (B, L-1)
    learner_logprobs = token_logprobs(engine, input_ids, attention_mask, temperature)  # (B, L-1)
    ref_logprobs = None
    if kl_coef > 0:
        with torch.no_grad():
            ref_logprobs = token_logprobs(ref_model, input_ids, attention_mask, temperature)  # (B, L-1)
    inputs = GRPOLossInputs(
        learner_logprobs=learner_logprobs,
        old_logprobs=learner_logprobs.detach(),  # one update per batch: ratio 1
        advantages=mb.advantages.to(engine.device),
        loss_mask=loss_mask,
        ref_logprobs=ref_logprobs,
    )
    loss, metrics = grpo_loss(inputs, clip_eps=clip_eps, kl_coef=kl_coef, num_tokens=num_tokens)
    logprob_gap = (mb.rollout_logprobs.to(engine.device) - learner_logprobs.detach()).abs() * loss_mask  # (B, L-1)
    metrics["logprob_diff"] = logprob_gap.sum().item() / num_tokens
    return loss, metrics


def first_loss_column(loss_mask: torch.Tensor) -> int:
    """The first column any row of the micro-batch trains on; logits before it are never needed."""
    columns = loss_mask.any(dim=0).nonzero()
    return int(columns[0]) if len(columns) else 0


def module_grad_norm(module: torch.nn.Module) -> float:
    grads = [p.grad.detach().float() for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
