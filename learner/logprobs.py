"""Per-token logprobs (and entropies) of the completion tokens of a micro-batch, the quantity every RL loss needs.

The LM head and the log-softmax run only where a completion token is predicted: the hidden states
of those positions are gathered first (`logits_to_keep` with an index tensor, for the packed
layout's single row), so no prompt position ever gets logits. logprob = gather(logits) -
logsumexp(logits), so no full (N, V) log_softmax is kept for backward. The temperature must match
the sampler's (vLLM divides its logits the same way) or the ratio to rollout logprobs is biased.

Results are on the micro-batch's (B, C) completion grid (see learner.batch), 0 off its token_mask.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor

from learner.batch import MicroBatch
from learner.segment_attention import SEGMENT_ATTENTION

# Attention implementations that can run the packed layout, and the (1, 1, L, L) mask's form for each
# (`rl_segments` reads the row's segments instead; the mask is there for the rest of the model).
MASKED_ATTENTION = {SEGMENT_ATTENTION: "bool", "sdpa": "bool", "eager": "additive"}


def hf_config(model):
    """The transformers config of a model, a DeepSpeed engine around one, or the critic's backbone."""
    module = getattr(model, "module", model)
    if hasattr(module, "backbone"):
        module = module.backbone
    return module.config


def model_device(model) -> torch.device:
    if hasattr(model, "device") and isinstance(model.device, torch.device):
        return model.device
    return next(model.parameters()).device


def packing_unsupported_reason(model) -> str | None:
    """Why `model` cannot run the packed layout (None when it can): its attention must take a 4D mask,
    and its forward must take position ids and an index tensor for logits_to_keep."""
    module = getattr(model, "module", model)
    implementation = getattr(hf_config(model), "_attn_implementation", None)
    if implementation not in MASKED_ATTENTION:
        return f"attention implementation {implementation!r} takes no custom 4D mask (packing needs one of {sorted(MASKED_ATTENTION)})"
    parameters = inspect.signature(module.forward).parameters
    for name in ("position_ids", "logits_to_keep"):
        if name not in parameters and not hasattr(module, "backbone"):
            return f"{type(module).__name__}.forward takes no {name}"
    return None


def attention_mask_for(model, mb: MicroBatch, dtype: torch.dtype) -> Tensor:
    """The micro-batch's mask in the form the model's attention wants (padded: the 2D padding mask)."""
    mask = mb.attention_mask.to(model_device(model))
    if not mb.packed:
        return mask
    if MASKED_ATTENTION.get(getattr(hf_config(model), "_attn_implementation", None)) == "additive":
        return torch.where(mask, 0.0, torch.finfo(dtype).min).to(dtype)
    return mask


def model_inputs(model, mb: MicroBatch, dtype: torch.dtype = torch.float32) -> dict:
    device = model_device(model)
    inputs = {"input_ids": mb.input_ids.to(device), "attention_mask": attention_mask_for(model, mb, dtype)}
    if mb.packed:
        inputs["position_ids"] = mb.position_ids.to(device)
        if getattr(hf_config(model), "_attn_implementation", None) == SEGMENT_ATTENTION:
            inputs["segments"] = mb.segments.to(device)  # passed through the layers to the attention function
    return inputs


def completion_logits(model, mb: MicroBatch) -> Tensor:
    """(N, V) logits at the positions that predict the micro-batch's completion tokens, in grid order."""
    device = model_device(model)
    sources = mb.source_positions.to(device)
    inputs = model_inputs(model, mb)
    if mb.packed:  # one row: keep exactly the predicting positions (a group's last prompt position n times)
        return model(**inputs, use_cache=False, logits_to_keep=sources).logits[0]
    # padded rows: the head runs from the first predicting column on, then each row's columns are picked
    length = mb.input_ids.shape[1]
    first = int((sources % length).min())
    kept = length - first
    logits = model(**inputs, use_cache=False, logits_to_keep=kept).logits  # (R, kept, V)
    rows, columns = sources // length, sources % length - first
    return logits.reshape(-1, logits.shape[-1])[rows * kept + columns]


def to_grid(values: Tensor, token_mask: Tensor) -> Tensor:
    """Scatter (N,) values of the real completion tokens onto the (B, C) grid, 0 elsewhere."""
    grid = torch.zeros(token_mask.shape, dtype=values.dtype, device=values.device)
    return grid.masked_scatter(token_mask.to(values.device), values)


def completion_logprobs(model, mb: MicroBatch, temperature: float = 1.0, with_entropy: bool = False,
                        entropy_grad: bool = True):
    """(B, C) logprobs of the completion tokens (and, with_entropy, the (B, C) entropy of each position's
    tempered next-token distribution, from the same logits), with grad when grad is enabled.

    entropy_grad=False: the entropy is only a diagnostic (no entropy bonus), computed without grad in
    row chunks, so it costs neither a forward pass nor memory kept for backward."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (greedy decoding has no logprobs to train on), got {temperature}")
    logits = completion_logits(model, mb)  # (N, V)
    if temperature != 1.0:
        logits = logits / temperature
    token_mask = mb.token_mask.to(logits.device)
    targets = mb.target_ids.to(logits.device)[token_mask]  # (N,)
    logprobs = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1).float() - torch.logsumexp(logits.float(), dim=-1)
    if with_entropy:
        entropy = token_entropy(logits) if entropy_grad else token_entropy_no_grad(logits)
        return to_grid(logprobs, token_mask), to_grid(entropy, token_mask)
    return to_grid(logprobs, token_mask)


def token_entropy(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last dimension, in float32 and with grad.

    H = -sum p log p = logsumexp(z) - sum softmax(z) * z, which needs no log_softmax tensor. Logits
    must be finite (a -inf logit gives 0 * -inf = NaN) and already divided by the temperature.
    """
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


ENTROPY_CHUNK_ROWS = 256  # bounds the diagnostic's transient float32 (rows, V) tensors (256 x 49k: 50 MB each)


@torch.no_grad()
def token_entropy_no_grad(logits: Tensor, chunk_rows: int = ENTROPY_CHUNK_ROWS) -> Tensor:
    """`token_entropy` of detached logits, a chunk of rows at a time: a metric, never part of the loss."""
    logits = logits.detach()
    return torch.cat([token_entropy(part) for part in logits.split(chunk_rows)]) if len(logits) else logits.new_zeros(0).float()
