"""Packed against padded per-sample micro-batches on the same samples: logprobs, losses, gradients, values, GAE.

Shared by tests/test_packing_exact.py (CPU, tiny model) and scripts/gpu_learner_check.py (CUDA). Plain
transformers modules, no DeepSpeed: each path runs `learner.step`'s own prepare / loss functions and
one backward over the whole batch, so what is compared is exactly what a step computes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import torch

from learner.batch import TrainSample
from learner.critic import ValueModel
from learner.logprobs import completion_logprobs
from learner.plan import Layout, epoch_plans
from learner.segment_attention import SEGMENT_ATTENTION, use_segment_attention
from learner.step import (
    StepSettings,
    critic_micro_batch_loss,
    policy_micro_batch_loss,
    prepare,
)

# The presets' settings (rl/config.py ALGORITHM_PRESETS) with a KL term, the entropy bonus and
# truncated importance sampling switched on, so that every term of the loss is exercised.
BASE = StepSettings(kl_coef=0.05, entropy_coef=0.01, tis_cap=2.0, temperature=0.9)
ALGORITHMS: dict[str, StepSettings] = {
    "grpo": BASE,
    "grpo_seq_mean": replace(BASE, loss_agg="seq_mean_token_mean"),
    "dr_grpo": replace(BASE, loss_agg="seq_mean_token_sum_norm", length_norm=16.0),
    "dapo": replace(BASE, clip_low=0.2, clip_high=0.28, kl_coef=0.0),
    "rloo": BASE,
    "ppo": replace(BASE, gae=True, gamma=1.0, lam=0.95),
    "ppo_kl_in_reward_minibatches": replace(BASE, gae=True, kl_in="reward", mini_batches=2, epochs=2),
}


def exactness_samples(algorithm: str, seed: int = 0, vocab: int = 5000) -> list[TrainSample]:
    """Groups of unequal prompt and completion lengths, one of 1-token completions, one longer than the budget."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(7, [3, 9, 1, 5]), (12, [1, 1, 1]), (4, [6, 2]), (30, [25, 18])]
    samples = []
    for prompt_len, completion_lens in shapes:
        prompt = torch.randint(100, vocab, (prompt_len,), generator=g).tolist()
        for c in completion_lens:
            samples.append(TrainSample(
                prompt_ids=prompt, completion_ids=torch.randint(100, vocab, (c,), generator=g).tolist(),
                rollout_logprobs=(-8.0 + torch.randn(c, generator=g)).tolist(),
                advantage=float(torch.randn(1, generator=g)), score=float(torch.rand(1, generator=g)),
            ))
    if algorithm == "dapo":
        samples[1] = replace(samples[1], in_loss=False)  # overlong filtering: out of the loss and its denominators
    if algorithm.startswith("ppo"):
        samples = [replace(s, advantage=0.0) for s in samples]  # GAE works per token
    return samples


@dataclass
class PathResult:
    logprobs: dict[int, torch.Tensor] = field(default_factory=dict)  # sample -> (C,) logprobs before the update
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    advantages: dict[int, torch.Tensor] = field(default_factory=dict)  # per token (GAE)
    loss: float = 0.0
    value_loss: float = 0.0
    grads: dict[str, torch.Tensor] = field(default_factory=dict)  # policy, then "critic." names


def per_sample(mb, grid: torch.Tensor, out: dict[int, torch.Tensor]) -> None:
    for row, index in enumerate(mb.sample_index):
        out[index] = grid[row][mb.token_mask[row].to(grid.device)].detach().double().cpu()


def run_path(policy, ref, critic, samples: list[TrainSample], settings: StepSettings, layout: Layout) -> PathResult:
    """Every mini-batch's loss and backward (grads accumulated over the batch), as one step's first epoch computes them."""
    result = PathResult()
    for module in (policy, critic):
        if module is not None:
            module.zero_grad(set_to_none=True)
    plans = epoch_plans(samples, layout, settings.mini_batches, settings.epochs, seed=settings.seed, step=1)[0]  # the step's own
    for mini in prepare(policy, plans, settings, ref, critic, world_size=1):
        for item in mini.items:
            with torch.no_grad():
                per_sample(item.mb, completion_logprobs(policy, item.mb, settings.temperature), result.logprobs)
            loss, _ = policy_micro_batch_loss(policy, item, settings, mini.num_tokens, mini.num_sequences)
            loss.backward()
            result.loss += loss.item()
            if critic is not None:
                per_sample(item.mb, item.old_values, result.values)
                per_sample(item.mb, item.advantages, result.advantages)
                value_loss, _ = critic_micro_batch_loss(critic, item, settings, mini.num_tokens)
                value_loss.backward()
                result.value_loss += value_loss.item()
    result.grads = {n: p.grad.detach().double().cpu().clone() for n, p in policy.named_parameters() if p.grad is not None}
    if critic is not None:
        result.grads.update({f"critic.{n}": p.grad.detach().double().cpu().clone()
                             for n, p in critic.named_parameters() if p.grad is not None})
    return result


def differences(packed: PathResult, padded: PathResult) -> dict[str, float]:
    """The acceptance measures: max |logprob| gap, loss relative gap, max per-tensor ||g_a - g_b|| / ||g_b||."""
    def max_abs(a: dict, b: dict) -> float:
        assert a.keys() == b.keys(), "the paths cover different samples"
        return max(((a[k] - b[k]).abs().max().item() for k in a), default=0.0)

    assert packed.grads.keys() == padded.grads.keys()
    grad_rel = max((torch.linalg.vector_norm(packed.grads[n] - padded.grads[n]) /
                    torch.linalg.vector_norm(padded.grads[n]).clamp(min=1e-30)).item() for n in padded.grads)
    return {
        "logprob_abs": max_abs(packed.logprobs, padded.logprobs),
        "value_abs": max_abs(packed.values, padded.values),
        "advantage_abs": max_abs(packed.advantages, padded.advantages),
        "loss_rel": abs(packed.loss - padded.loss) / max(abs(padded.loss), 1e-30),
        "value_loss_rel": abs(packed.value_loss - padded.value_loss) / max(abs(padded.value_loss), 1e-30),
        "grad_rel": grad_rel,
    }


TOLERANCES = {"logprob_abs": 5e-5, "value_abs": 5e-5, "advantage_abs": 5e-5, "loss_rel": 1e-5, "value_loss_rel": 1e-5,
              "grad_rel": 1e-4}


def build_models(model_dir: str, device: torch.device, with_critic: bool, seed: int = 0,
                 attention: str = SEGMENT_ATTENTION):
    """The policy, a reference that differs from it (so the KL is not 0), and a critic with a non-zero head.

    attention: `rl_segments` (what the learner runs: sdpa models switched to it), `sdpa` (SDPA over
    the whole row with the 4D mask) or `eager`."""
    from transformers import AutoModel, AutoModelForCausalLM

    torch.manual_seed(seed)
    loaded_as = "sdpa" if attention == SEGMENT_ATTENTION else attention
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=loaded_as).to(device)
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.02 * torch.randn_like(p))
    critic = None
    if with_critic:
        backbone = AutoModel.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=loaded_as)
        critic = ValueModel(backbone, backbone.config.hidden_size).to(device)
        torch.nn.init.normal_(critic.value_head.weight, std=0.5)
    if attention == SEGMENT_ATTENTION:
        for model in (policy, ref, critic.backbone if critic is not None else None):
            if model is not None:
                assert use_segment_attention(model.config), "the tiny model's attention is not sdpa"
    return policy, ref, critic


def compare_layouts(model_dir: str, algorithm: str, device: torch.device, max_tokens: int = 48,
                    attention: str = SEGMENT_ATTENTION) -> dict[str, float]:
    """Packed (several rows, one group over the budget) against one padded row per sample, on one algorithm."""
    settings = ALGORITHMS[algorithm]
    policy, ref, critic = build_models(model_dir, device, settings.gae, attention=attention)
    samples = exactness_samples(algorithm)
    packed = run_path(policy, ref, critic, samples, settings, Layout(packing=True, max_tokens_per_micro_batch=max_tokens))
    padded = run_path(policy, ref, critic, samples, settings, Layout(packing=False, micro_batch_size=1))
    return differences(packed, padded)
