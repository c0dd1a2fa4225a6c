"""Per-token logprobs of a causal LM on a right-padded batch, the quantity every RL loss needs.

logprob[t] = log_softmax(logits[t] / temperature)[input_ids[t + 1]], computed as
gather(logits) - logsumexp(logits) so that no full (B, L, V) log_softmax is kept: with SmolLM2's
vocabulary (49152) a (8, 512, V) float32 tensor is 800 MB, and autograd would save it for backward.
The temperature must match the sampler's (vLLM divides its logits the same way) or the ratio to
rollout logprobs is biased.
"""

from __future__ import annotations

import torch
from torch import Tensor


def token_logprobs(
    model, input_ids: Tensor, attention_mask: Tensor, temperature: float = 1.0, first_position: int = 0,
    return_entropy: bool = False,
):
    """Return (B, L-1): logprob of input_ids[:, t+1] given input_ids[:, :t+1], for a model or a DeepSpeed engine.

    Only columns t >= `first_position` are computed (the rest are 0): the LM head, a fifth of a
    small model's FLOPs, then skips the prompt positions that no loss reads. With `return_entropy`
    also the (B, L-1) entropy of each position's (tempered) next-token distribution, with grad,
    from the same logits (one forward pass).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (greedy decoding has no logprobs to train on), got {temperature}")
    length = input_ids.shape[1]
    if not 0 <= first_position < length - 1:
        raise ValueError(f"first_position must be in [0, {length - 1}), got {first_position}")
    kept = length - first_position  # positions first_position .. L-1 get logits
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=kept).logits
    logits = logits[:, :-1]  # (B, L-1-first_position, V): position t predicts token t+1
    if temperature != 1.0:
        logits = logits / temperature  # the one extra (B, T, V) tensor
    targets = input_ids[:, first_position + 1 :].unsqueeze(-1)  # (B, T, 1)
    target_logits = torch.gather(logits, dim=-1, index=targets).squeeze(-1)  # (B, T)
    kept_logprobs = target_logits.float() - torch.logsumexp(logits.float(), dim=-1)  # (B, T)
    logprobs = torch.nn.functional.pad(kept_logprobs, (first_position, 0))  # (B, L-1)
    if return_entropy:
        return logprobs, torch.nn.functional.pad(token_entropy(logits), (first_position, 0))
    return logprobs


def token_entropy(logits: Tensor) -> Tensor:
    """Return (B, T) entropy of softmax(logits) for logits (B, T, V), in float32 and with grad.

    H = -sum p log p = logsumexp(z) - sum softmax(z) * z, which needs no log_softmax tensor. Logits
    must be finite (a -inf logit gives 0 * -inf = NaN) and already divided by the temperature.
    """
    logits = logits.float()  # (B, T, V)
    probs = torch.softmax(logits, dim=-1)  # (B, T, V)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)  # (B, T)
