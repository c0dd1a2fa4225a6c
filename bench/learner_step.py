"""One GRPO optimizer step on the default model: the packed learner against the padded one it replaced.

value:     `learner.step.train_step` with the packed layout (the default): each group's prompt once,
           groups packed into rows of `train.max_tokens_per_micro_batch` tokens, segment attention
           (SDPA per prompt and per chunk of completions), the LM head only where a completion
           token is predicted.
reference: the padded path as it was before: one right-padded row per sample, micro-batches of 8,
           the LM head and log-softmax on every position.
Both: the same DeepSpeed engine (one fp32 rank: no ZeRO, torch AdamW), the same batch, GRPO's
token-mean loss with one update per batch. Each path runs in its own subprocess, so each peak RSS
is its own. On the first shape a third run, `padded, ZeRO-1`, is the learner as it was before
both changes (ZeRO-1's second weight copy on one rank too): its time and peak are printed as well,
and so are those of `packed-masked`, the packed layout with SDPA over each whole row under its
(1, 1, L, L) mask, as it ran before segment attention (`learner/segment_attention.py`).

Shapes (prompts x samples per prompt, prompt tokens, completion tokens):
- quickstart: 8 x 4, ~130, 10-40 (the last JSON line);
- short:      8 x 4, ~40, ~45;
- long:       2 x 16, ~300, ~100.

tokens/s counts each sample's prompt + completion tokens, for both paths (what a learner without
shared prompts has to process), so the ratio of rates is the ratio of step times.

    python bench/learner_step.py [--repeats 2] [--shapes quickstart,short,long] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from learner.batch import TrainSample  # noqa: E402
from learner.plan import Layout  # noqa: E402
from rl.process_env import DISTRIBUTED_ENV  # noqa: E402

SHAPES = {  # prompts, samples per prompt, prompt length range, completion length range
    "quickstart": (8, 4, (125, 136), (10, 41)),
    "short": (8, 4, (35, 46), (35, 56)),
    "long": (2, 16, (290, 311), (80, 121)),
}


def shape_samples(shape: str, seed: int = 0, vocab: int = 40000) -> list[TrainSample]:
    prompts, n, (p_lo, p_hi), (c_lo, c_hi) = SHAPES[shape]
    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(prompts):
        prompt = torch.randint(100, vocab, (int(torch.randint(p_lo, p_hi, (1,), generator=g)),), generator=g).tolist()
        for _ in range(n):
            c = int(torch.randint(c_lo, c_hi, (1,), generator=g))
            samples.append(TrainSample(prompt, torch.randint(100, vocab, (c,), generator=g).tolist(), [-2.0] * c,
                                       float(torch.randn(1, generator=g))))
    return samples


def use_full_head() -> None:
    """The reference path: logits on every position, then the completion positions picked (the old code)."""
    import learner.logprobs as lp

    def full_logits(model, mb):
        inputs = lp.model_inputs(model, mb)
        logits = model(**inputs, use_cache=False).logits  # (R, L, V)
        return logits.reshape(-1, logits.shape[-1])[mb.source_positions.to(logits.device)]

    lp.completion_logits = full_logits


def peak_memory_mib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(path: str, shape: str, repeats: int, device: str, model: str, max_tokens: int) -> dict:
    """Time `repeats` steps after a warm-up step of one path on one shape, in this process."""
    from learner.engine import init_distributed
    from learner.plan import choose_layout
    from learner.step import StepSettings, train_step
    from rl.models import resolve_model

    import learner.engine

    torch.set_num_threads(2) if device == "cpu" else None
    if path.startswith("padded"):
        use_full_head()
    if path == "padded-zero1":  # the engine as it was: ZeRO-1 even on one fp32 rank
        learner.engine.effective_zero_stage = lambda zero_stage, world_size, dtype: zero_stage
    packed = path.startswith("packed")
    layout = Layout(packing=True, max_tokens_per_micro_batch=max_tokens) if packed else Layout(packing=False, micro_batch_size=8)
    init_distributed()
    engine = learner.engine.build_policy_engine(
        str(resolve_model(model)), lr=1e-6, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0, total_steps=10,
        zero_stage=1, micro_batch_size=8, grad_accum_steps=4, grad_clip=1.0, dtype="float32", seed=0,
    )
    if path == "packed":  # as the learner sets it up: its sdpa model switched to segment attention
        layout = choose_layout(layout, {"policy": engine})
    samples = shape_samples(shape)
    memory_before = peak_memory_mib(device)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        train_step(engine, samples, StepSettings(), layout)
        if device == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step warms up (allocator, kernels, Adam's state)
            times.append(time.perf_counter() - start)
    tokens = sum(len(s.prompt_ids) + len(s.completion_ids) for s in samples)
    return {"path": path, "shape": shape, "times": times, "seconds": statistics.median(times), "tokens": tokens,
            "peak_mib": peak_memory_mib(device), "peak_before_steps_mib": memory_before}


def run_in_subprocess(path: str, shape: str, args) -> dict:
    command = [sys.executable, __file__, "--worker", path, "--shapes", shape, "--repeats", str(args.repeats),
               "--device", args.device, "--model", args.model, "--max-tokens", str(args.max_tokens)]
    # a process group of the caller's (MASTER_PORT, RANK, ...) must not leak into the measured process
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{path} on {shape} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--shapes", default="quickstart,short,long")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--max-tokens", type=int, default=Layout().max_tokens_per_micro_batch)
    parser.add_argument("--worker", choices=["packed", "packed-masked", "padded", "padded-zero1"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.shapes, args.repeats, args.device, args.model, args.max_tokens)))
        return

    started = time.perf_counter()
    shapes = args.shapes.split(",")
    results = {}
    for shape in shapes:
        packed, padded = (run_in_subprocess(path, shape, args) for path in ("packed", "padded"))
        results[shape] = (packed, padded)
        print(f"{shape:>10}: {packed['tokens']} sample tokens | packed {packed['seconds']:.2f} s "
              f"({packed['tokens'] / packed['seconds']:.0f} tok/s, peak {packed['peak_mib']:.0f} MiB) | padded "
              f"{padded['seconds']:.2f} s ({padded['tokens'] / padded['seconds']:.0f} tok/s, peak {padded['peak_mib']:.0f} MiB) | "
              f"speed-up {padded['seconds'] / packed['seconds']:.2f}x, memory {packed['peak_mib'] / padded['peak_mib']:.2f}x", flush=True)
    before = run_in_subprocess("padded-zero1", shapes[0], args)
    packed = results[shapes[0]][0]
    print(f"{shapes[0]:>10}: padded with ZeRO-1 (the learner before both changes) {before['seconds']:.2f} s, peak "
          f"{before['peak_mib']:.0f} MiB | packed against it: speed-up {before['seconds'] / packed['seconds']:.2f}x, "
          f"memory {packed['peak_mib'] / before['peak_mib']:.2f}x (runs {[round(t, 2) for t in before['times']]})", flush=True)
    masked = run_in_subprocess("packed-masked", shapes[0], args)
    print(f"{shapes[0]:>10}: packed with SDPA over the whole row and its 4D mask (before segment attention) "
          f"{masked['seconds']:.2f} s, peak {masked['peak_mib']:.0f} MiB | segment attention against it: speed-up "
          f"{masked['seconds'] / packed['seconds']:.2f}x (runs {[round(t, 2) for t in masked['times']]})", flush=True)
    print(f"runs: " + "; ".join(f"{s} packed {[round(t, 2) for t in p['times']]} padded {[round(t, 2) for t in q['times']]}"
                                 for s, (p, q) in results.items()))
    print(f"benchmark took {time.perf_counter() - started:.0f} s")
    packed, padded = results[shapes[0]]
    print(json.dumps({"metric": f"learner_step_tokens_per_s_{shapes[0]}", "value": round(packed["tokens"] / packed["seconds"], 1),
                      "reference": round(padded["tokens"] / padded["seconds"], 1),
                      "ratio": round(padded["seconds"] / packed["seconds"], 3), "unit": "tokens/s"}))


if __name__ == "__main__":
    main()
