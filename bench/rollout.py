"""Rollout throughput: the vLLM RolloutEngine against plain transformers `generate`.

Same prompts for both: 16 arithmetic chat prompts (the default model's chat template), 4 samples
each, up to 64 new tokens, temperature 1, top-p 1, no top-k, fp32, 2 torch threads. Each side is
warmed up once, then timed 3 times; the median counts. Generated tokens are counted up to and
including the EOS that ends a sample (no padding).

Also times `RolloutEngine.load_weights` with the model's full state dict.

Run by hand: `python bench/rollout.py`. The last line printed is one JSON object:
{"metric": "rollout_tokens_per_s", "value": <vLLM>, "reference": <transformers>, "ratio": ..., "unit": "tokens/s"}
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

N_PROMPTS, N_SAMPLES, MAX_NEW_TOKENS, TEMPERATURE, RUNS = 16, 4, 64, 1.0, 3


def build_prompts(tokenizer, count: int = N_PROMPTS, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        a, b, op = rng.randint(2, 99), rng.randint(2, 99), rng.choice("+-*")
        messages = [{"role": "user", "content": f"What is {a} {op} {b}? Put the final answer in \\boxed{{}}."}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # transformers 5 may return a BatchEncoding
            ids = ids["input_ids"]
        prompts.append(list(ids))
    return prompts


def bench_vllm(model_path: str, prompts: list[list[int]]) -> tuple[float, dict]:
    from rollout.engine import RolloutEngine

    t0 = time.perf_counter()
    engine = RolloutEngine(model_path)
    start_s = time.perf_counter() - t0
    kwargs = dict(n=N_SAMPLES, temperature=TEMPERATURE, top_p=1.0, max_tokens=MAX_NEW_TOKENS)
    engine.generate(prompts, **kwargs)  # warm-up
    rates = []
    for run in range(RUNS):
        t0 = time.perf_counter()
        out = engine.generate(prompts, **kwargs)
        elapsed = time.perf_counter() - t0
        tokens = sum(len(c.token_ids) for group in out for c in group)
        rates.append(tokens / elapsed)
        print(f"vllm run {run}: {tokens} tokens in {elapsed:.2f} s = {rates[-1]:.1f} tok/s", flush=True)

    from safetensors.torch import load_file

    state = {}
    for f in sorted(Path(model_path).glob("*.safetensors")):
        state.update(load_file(f))
    state = {k: v.float().contiguous() for k, v in state.items()}
    nbytes = sum(v.numel() * v.element_size() for v in state.values())
    load_times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        engine.load_weights(list(state.items()))
        load_times.append(time.perf_counter() - t0)
    print(
        f"vllm engine start {start_s:.1f} s; load_weights of the full state dict "
        f"({len(state)} tensors, {nbytes / 1e6:.0f} MB): "
        + ", ".join(f"{t:.3f}" for t in load_times)
        + " s",
        flush=True,
    )
    engine.close()
    return statistics.median(rates), {"engine_start_s": start_s, "load_weights_s": statistics.median(load_times)}


def bench_transformers(model_path: str, prompts: list[list[int]], threads: int = 2) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # left padding
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}

    def run() -> tuple[int, float]:
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                do_sample=True,
                temperature=TEMPERATURE,
                top_p=1.0,
                top_k=0,
                num_return_sequences=N_SAMPLES,
                max_new_tokens=MAX_NEW_TOKENS,
                pad_token_id=pad,
            )
        elapsed = time.perf_counter() - t0
        tokens = 0
        for row in out[:, width:].tolist():
            for k, tok in enumerate(row):
                if tok in eos_ids:
                    tokens += k + 1
                    break
            else:
                tokens += len(row)
        return tokens, elapsed

    run()  # warm-up
    rates = []
    for i in range(RUNS):
        tokens, elapsed = run()
        rates.append(tokens / elapsed)
        print(f"transformers run {i}: {tokens} tokens in {elapsed:.2f} s = {rates[-1]:.1f} tok/s", flush=True)
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from rl.models import resolve_model

    model_path = str(resolve_model(args.model))
    prompts = build_prompts(AutoTokenizer.from_pretrained(model_path))
    print(f"{len(prompts)} prompts x {N_SAMPLES} samples, <= {MAX_NEW_TOKENS} new tokens, T={TEMPERATURE}", flush=True)
    reference = bench_transformers(model_path, prompts)
    value, extra = bench_vllm(model_path, prompts)
    print(f"vllm {value:.1f} tok/s, transformers {reference:.1f} tok/s, {extra}", flush=True)
    print(json.dumps({"metric": "rollout_tokens_per_s", "value": round(value, 4), "reference": round(reference, 4),
                      "ratio": round(value / reference, 3), "unit": "tokens/s"}))


if __name__ == "__main__":
    main()
