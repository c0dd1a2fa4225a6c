"""PPO's critic: a transformer with a scalar value head, trained by its own DeepSpeed engine.

The critic starts from the policy's model (or `critic.model`) without its LM head; a linear head
maps each position's last hidden state to V(s_t), the value of the text so far. The head starts
at zero, so the first GAE advantages are plain discounted returns rather than noise.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from learner.batch import MicroBatch
from learner.engine import check_dtype, init_distributed, wrap_in_deepspeed
from learner.logprobs import model_inputs, to_grid


class ValueModel(nn.Module):
    def __init__(self, backbone: nn.Module, hidden_size: int):
        super().__init__()
        self.backbone = backbone
        self.value_head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None,
                source_positions: Tensor | None = None, **attention_kwargs) -> Tensor:
        """(R, L) values, column t being V of the prefix through token t (the state before token t+1); with
        `source_positions`, only the (N,) values at those flattened positions: the head runs on nothing else."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=False, **attention_kwargs).last_hidden_state  # e.g. `segments`
        if source_positions is not None:
            hidden = hidden.reshape(-1, hidden.shape[-1])[source_positions]  # (N, H)
        return self.value_head(hidden).squeeze(-1).float()


def load_value_model(model_path: str) -> ValueModel:
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(model_path)
    backbone = AutoModel.from_pretrained(model_path, dtype=torch.float32)
    return ValueModel(backbone, config.hidden_size)


def build_critic_engine(
    model_path: str, *, lr: float, warmup_steps: int, total_steps: int, zero_stage: int, micro_batch_size: int,
    grad_accum_steps: int, grad_clip: float, dtype: str, gradient_checkpointing: bool = False,
):
    """The critic's DeepSpeed engine (AdamW, no weight decay, the policy's ZeRO stage and dtype)."""
    check_dtype(dtype)
    init_distributed()
    model = load_value_model(model_path)
    if gradient_checkpointing:
        model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return wrap_in_deepspeed(
        model, lr=lr, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=warmup_steps, total_steps=total_steps,
        zero_stage=zero_stage, micro_batch_size=micro_batch_size, grad_accum_steps=grad_accum_steps, grad_clip=grad_clip,
        dtype=dtype,
    )


def completion_values(critic, mb: MicroBatch) -> Tensor:
    """(B, C) values on the completion grid: column j is V(state before completion token j)."""
    inputs = model_inputs(critic, mb)
    values = critic(**inputs, source_positions=mb.source_positions.to(inputs["input_ids"].device))
    return to_grid(values, mb.token_mask)
