"""One GRPO learner step on the default model: our DeepSpeed path against plain PyTorch.

value:     `learner.step.grpo_step` on a DeepSpeed engine (ZeRO 1, fp32, torch AdamW), with the LM
           head computed only from the first completion column on.
reference: the textbook loop on the same batch: a transformers model, full logits, the same
           token-mean GRPO loss, backward per micro-batch, gradient clipping, torch AdamW step.

The batch has the quickstart's shape: 32 sequences of a ~130-token prompt and a 10-40-token
completion, micro-batches of 8.

    python bench/learner_step.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))

from learner.batch import TrainSample, build_micro_batches  # noqa: E402
from learner.engine import build_policy_engine, init_distributed  # noqa: E402
from learner.losses import GRPOLossInputs, grpo_loss  # noqa: E402
from learner.step import grpo_step  # noqa: E402
from rl.models import resolve_model  # noqa: E402


def quickstart_like_samples(count: int = 32, seed: int = 0) -> list[TrainSample]:
    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(count):
        prompt = torch.randint(100, 40000, (int(torch.randint(125, 136, (1,), generator=g)),), generator=g).tolist()
        completion = torch.randint(100, 40000, (int(torch.randint(10, 41, (1,), generator=g)),), generator=g).tolist()
        samples.append(TrainSample(prompt, completion, [-2.0] * len(completion), float(torch.randn(1, generator=g))))
    return samples


def plain_pytorch_step(model, optimizer, micro_batches) -> None:
    num_tokens = sum(mb.num_loss_tokens for mb in micro_batches)
    for mb in micro_batches:
        logits = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits[:, :-1]  # (B, L-1, V)
        logprobs = torch.log_softmax(logits.float(), dim=-1).gather(-1, mb.input_ids[:, 1:, None]).squeeze(-1)
        inputs = GRPOLossInputs(logprobs, logprobs.detach(), mb.advantages, mb.loss_mask)
        loss, _ = grpo_loss(inputs, clip_eps=0.2, kl_coef=0.0, num_tokens=num_tokens)
        loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model_path = str(resolve_model("smollm2-135m-instruct"))
    micro_batches = build_micro_batches(quickstart_like_samples(), micro_batch_size=8, pad_id=0)
    tokens = sum(int(mb.attention_mask.sum()) for mb in micro_batches)

    init_distributed()
    engine = build_policy_engine(
        model_path, lr=1e-6, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0, total_steps=10, zero_stage=1,
        micro_batch_size=8, grad_accum_steps=len(micro_batches), grad_clip=1.0, dtype="float32", seed=0,
    )
    ours = timed(lambda: grpo_step(engine, micro_batches, clip_eps=0.2, kl_coef=0.0, temperature=1.0), args.repeats)

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    plain = timed(lambda: plain_pytorch_step(model, optimizer, micro_batches), args.repeats)

    value, reference = statistics.median(ours), statistics.median(plain)
    print(f"batch: 32 sequences, {tokens} tokens, {len(micro_batches)} micro-batches")
    print(f"grpo_step (DeepSpeed): median {value:.2f} s  runs {[round(t, 2) for t in ours]}  ({tokens / value:.0f} tokens/s)")
    print(f"plain PyTorch step:    median {reference:.2f} s  runs {[round(t, 2) for t in plain]}  ({tokens / reference:.0f} tokens/s)")
    print(json.dumps({"metric": "learner_step_seconds", "value": round(value, 4), "reference": round(reference, 4),
                      "ratio": round(value / reference, 3), "unit": "s"}))


if __name__ == "__main__":
    main()
