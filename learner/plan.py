"""Which samples go into which micro-batch, mini-batch and learner rank for one training step.

- Mini-batches (PPO's `train.mini_batches`): the batch's samples, ordered group by group, in
  consecutive slices of near-equal size; each slice is one optimizer update. With several
  mini-batches every epoch takes the groups in its own shuffled order, seeded by (seed, step,
  epoch) alone, so every rank plans the same and a rerun repeats it (`epoch_plans`).
- Packed layout: a mini-batch's groups (samples sharing a prompt) go into rows of at most
  `max_tokens_per_micro_batch` tokens (first-fit decreasing; a group longer than the budget gets a
  row of its own). With several ranks the budget shrinks to about a rank's share of the tokens,
  so that there are rows for every rank to work on.
- Padded layout: `micro_batch_size` samples per micro-batch, in order.
- Ranks: micro-batches go to the least-loaded rank by tokens, largest first. Every rank makes the
  same number of forward/backward passes (ZeRO's collectives run in lockstep): a rank with fewer
  micro-batches runs copies of its smallest one with weight 0.

Every rank computes the same plan from the same samples, so the denominators (the whole
mini-batch's loss tokens and sequences) need no communication.

Samples that cannot change the update (`computed` says which can: e.g. an advantage of exactly 0
with no KL or entropy term) stay in the denominators but out of the micro-batches. A mini-batch
left with none runs one copy of its smallest sample weighted 0, so that its optimizer step (with
zero gradients: AdamW's moments still move the weights) happens as it would have.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from learner.batch import MicroBatch, TrainSample, collate_packed, collate_padded
from learner.logprobs import hf_config, packing_unsupported_reason
from learner.segment_attention import SEGMENT_ATTENTION, use_segment_attention
from rl.coordinator import split_evenly

log = logging.getLogger("learner")


# train.max_tokens_per_micro_batch when unset. On 2 CPU cores a quickstart step took about the
# same time with rows of 512 or 1024 tokens, and 0.7 GiB less peak memory with 512 (docs/benchmarks.md).
DEFAULT_MAX_TOKENS = {"cpu": 512, "cuda": 8192}


def default_max_tokens(device_type: str) -> int:
    return DEFAULT_MAX_TOKENS.get(device_type, DEFAULT_MAX_TOKENS["cpu"])


@dataclass(frozen=True)
class Layout:
    packing: bool = True
    max_tokens_per_micro_batch: int = DEFAULT_MAX_TOKENS["cpu"]
    micro_batch_size: int = 8  # the padded layout's sequences per micro-batch
    pad_id: int = 0


@dataclass
class MiniBatchPlan:
    micro_batches: list[MicroBatch] = field(default_factory=list)  # this rank's, in order
    weights: list[float] = field(default_factory=list)  # 1.0, or 0.0 for a copy that only keeps ranks in lockstep
    num_tokens: int = 0  # loss tokens of the whole mini-batch, every rank's
    num_sequences: int = 0  # samples with a token in the loss, every rank's
    computed_tokens: int = 0  # the loss tokens of the samples that are computed (the diagnostics' denominator)
    skipped: int = 0  # samples left out because they cannot change the update


def group_indices(samples: list[TrainSample], indices: list[int]) -> list[list[int]]:
    """`indices` grouped by identical prompt, groups in order of first appearance."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in indices:
        groups.setdefault(tuple(samples[i].prompt_ids), []).append(i)
    return list(groups.values())


def pack_groups(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: bins (lists of item indices, each in input order) of total length <= capacity."""
    bins: list[list[int]] = []
    loads: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for b, load in enumerate(loads):
            if load + lengths[i] <= capacity:
                bins[b].append(i)
                loads[b] += lengths[i]
                break
        else:  # a group over the budget opens a row of its own, as does one that fits nowhere
            bins.append([i])
            loads.append(lengths[i])
    return [sorted(b) for b in bins]


def micro_batches_of(samples: list[TrainSample], indices: list[int], layout: Layout, world_size: int) -> list[MicroBatch]:
    if not layout.packing:
        if layout.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {layout.micro_batch_size}")
        return [collate_padded([samples[i] for i in chunk], layout.pad_id, chunk)
                for chunk in (indices[k : k + layout.micro_batch_size] for k in range(0, len(indices), layout.micro_batch_size))]
    groups = group_indices(samples, indices)
    lengths = [len(samples[g[0]].prompt_ids) + sum(len(samples[i].completion_ids) for i in g) for g in groups]
    capacity = layout.max_tokens_per_micro_batch
    if world_size > 1:  # leave work for every rank
        capacity = min(capacity, max(max(lengths), math.ceil(sum(lengths) / world_size)))
    out = []
    for row in pack_groups(lengths, capacity):
        row_groups = [groups[g] for g in row]
        out.append(collate_packed([[samples[i] for i in g] for g in row_groups], [i for g in row_groups for i in g]))
    return out


def compute_cost(mb: MicroBatch) -> int:
    """Tokens the forward pass runs over, padding included (what a rank spends on it)."""
    return int(mb.input_ids.numel())


def assign_to_ranks(micro_batches: list[MicroBatch], world_size: int) -> list[list[int]]:
    """Indices of each rank's micro-batches: largest first to the least-loaded rank; each rank's in input order."""
    loads = [0] * world_size
    owned: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(micro_batches)), key=lambda i: -compute_cost(micro_batches[i])):
        r = min(range(world_size), key=lambda r: (loads[r], r))
        owned[r].append(i)
        loads[r] += compute_cost(micro_batches[i])
    return [sorted(o) for o in owned]


def shuffled_order(samples: list[TrainSample], seed: int, step: int, epoch: int) -> list[int]:
    """Every sample index, group by group, the groups in an order drawn from (seed, step, epoch) only:
    no global random state, so all learner ranks draw the same order."""
    groups = group_indices(samples, list(range(len(samples))))
    random.Random(f"mini-batches-{seed}-{step}-{epoch}").shuffle(groups)  # a str seed hashes the same in every process
    return [i for group in groups for i in group]


Computed = Callable[[TrainSample], bool]


def epoch_plans(samples: list[TrainSample], layout: Layout, mini_batches: int, epochs: int, *, seed: int, step: int,
                rank: int = 0, world_size: int = 1, computed: Computed | None = None) -> list[list[MiniBatchPlan]]:
    """The plan of each epoch, each with its own order of groups. One mini-batch: one plan for every
    epoch (the update sees the whole batch whatever the order)."""
    if mini_batches <= 1:
        return [plan_step(samples, layout, 1, rank, world_size, computed=computed)]
    return [plan_step(samples, layout, mini_batches, rank, world_size, order=shuffled_order(samples, seed, step, epoch),
                      computed=computed) for epoch in range(epochs)]


def plan_step(samples: list[TrainSample], layout: Layout, mini_batches: int = 1, rank: int = 0,
              world_size: int = 1, order: list[int] | None = None, computed: Computed | None = None) -> list[MiniBatchPlan]:
    """This rank's share of every mini-batch of the step, with the whole mini-batch's denominators.

    `order`: the sample indices in the order the mini-batches slice them (default group by group, as received).
    `computed`: which samples the passes must run over (default all); the others only count in the denominators.
    """
    if not samples:
        raise ValueError("no samples to train on")
    ordered = order if order is not None else [i for group in group_indices(samples, list(range(len(samples)))) for i in group]
    if sorted(ordered) != list(range(len(samples))):
        raise ValueError("order must list every sample index exactly once")
    plans = []
    for indices in (part for part in split_evenly(ordered, max(1, mini_batches)) if part):
        kept = [i for i in indices if computed is None or computed(samples[i])]
        every = micro_batches_of(samples, kept, layout, world_size)
        owned = assign_to_ranks(every, world_size)
        count = max(1, max(len(o) for o in owned))  # at least one pass: the optimizer step needs its (zero) gradients
        mine = [every[i] for i in owned[rank]]
        weights = [1.0] * len(mine)
        while len(mine) < count:  # lockstep: copy the smallest micro-batch, weighted 0
            mine.append(min(every, key=compute_cost) if every else smallest_sample_batch(samples, indices, layout))
            weights.append(0.0)
        plans.append(MiniBatchPlan(
            micro_batches=mine, weights=weights,
            num_tokens=sum(len(samples[i].completion_ids) for i in indices if samples[i].in_loss),
            num_sequences=sum(1 for i in indices if samples[i].in_loss and samples[i].completion_ids),
            computed_tokens=sum(len(samples[i].completion_ids) for i in kept if samples[i].in_loss),
            skipped=len(indices) - len(kept),
        ))
    return plans


def smallest_sample_batch(samples: list[TrainSample], indices: list[int], layout: Layout) -> MicroBatch:
    """A micro-batch of the mini-batch's shortest sample (for a pass weighted 0)."""
    candidates = [i for i in indices if samples[i].completion_ids] or indices
    shortest = min(candidates, key=lambda i: len(samples[i].prompt_ids) + len(samples[i].completion_ids))
    return micro_batches_of(samples, [shortest], layout, 1)[0]


def choose_layout(wanted: Layout, models: dict[str, object]) -> Layout:
    """`wanted`, or the padded layout when a model's attention cannot take the packed mask (said in one log line)."""
    if not wanted.packing:
        log.info("learner layout: padded, %d rows per micro-batch (train.packing: false)", wanted.micro_batch_size)
        return wanted
    for name, model in models.items():
        reason = packing_unsupported_reason(model) if model is not None else None
        if reason is not None:
            log.warning("train.packing: the %s cannot run packed micro-batches (%s); falling back to one padded row "
                        "per sample, %d per micro-batch", name, reason, wanted.micro_batch_size)
            return replace(wanted, packing=False)
    # sdpa models run SDPA per segment (each prompt, each completion against its prompt), not over the masked row
    switched = [use_segment_attention(hf_config(model)) for model in models.values() if model is not None]
    attention = getattr(hf_config(models["policy"]), "_attn_implementation", None)
    how = ("SDPA per prompt and per completion, no masked pairs computed" if attention == SEGMENT_ATTENTION and all(switched)
           else f"{attention} attention over the row with a 4D mask")
    log.info("learner layout: packed, shared prompts, up to %d tokens per micro-batch (%s)",
             wanted.max_tokens_per_micro_batch, how)
    return wanted
