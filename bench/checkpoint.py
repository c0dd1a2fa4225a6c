"""Checkpoint save and resume time on the default model, against writing the same bytes raw.

value:     `learner.checkpoint.save_checkpoint` of SmolLM2-135M under DeepSpeed ZeRO 1 (fp32,
           AdamW state filled by one step): DeepSpeed's files, the Hugging Face policy folder,
           the random state, the trainer state, fsync, atomic rename.
reference: the same tensors (weights, Adam's exp_avg and exp_avg_sq) written once as a
           safetensors file and fsynced, in the same folder: the floor for writing that state.
Also printed: loading the checkpoint into the engine (resume) against reading the raw file.
The checkpoint holds more bytes than the reference: DeepSpeed keeps its own flat fp32 copy of the
parameters beside the module's, and the Hugging Face policy folder is a third copy (what
`rl export` copies without unpickling anything).

    python bench/checkpoint.py [--repeats 3] [--dir /tmp/rl-bench-checkpoint]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))

from learner.batch import TrainSample  # noqa: E402
from learner.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint  # noqa: E402
from learner.engine import build_policy_engine  # noqa: E402
from learner.step import grpo_step  # noqa: E402
from rl.models import resolve_model  # noqa: E402


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default="/tmp/rl-bench-checkpoint")
    args = parser.parse_args()
    from safetensors.torch import load_file, save_file

    model_path = str(resolve_model("smollm2-135m-instruct"))
    engine = build_policy_engine(
        model_path, lr=1e-5, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0, total_steps=1, zero_stage=1,
        micro_batch_size=4, grad_accum_steps=1, grad_clip=1.0, dtype="float32", seed=0,
    )
    samples = [TrainSample(list(range(100, 140)), list(range(200, 220)), [-2.0] * 20, 1.0 - i) for i in range(4)]
    grpo_step(engine, samples, clip_eps=0.2, kl_coef=0.0, temperature=1.0)  # fills Adam's state

    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    state = {"policy_version": 1, "source": {}, "wandb_id": None}
    saves, raw_writes, loads, raw_reads = [], [], [], []
    for repeat in range(args.repeats):
        run_dir = root / f"run-{repeat}"
        start = time.perf_counter()
        save_checkpoint(engine, run_dir, 1, state, model_path, keep_last=1)
        saves.append(time.perf_counter() - start)

        tensors = {f"param.{n}": p.detach().contiguous() for n, p in engine.module.named_parameters()}
        optimizer = engine.optimizer.optimizer if hasattr(engine.optimizer, "optimizer") else engine.optimizer
        for i, s in enumerate(optimizer.state.values()):
            for key in ("exp_avg", "exp_avg_sq"):
                tensors[f"opt.{i}.{key}"] = s[key].contiguous()
        raw = root / f"raw-{repeat}.safetensors"
        start = time.perf_counter()
        save_file(tensors, str(raw))
        with open(raw, "rb") as handle:
            os.fsync(handle.fileno())
        raw_writes.append(time.perf_counter() - start)

        start = time.perf_counter()
        load_checkpoint(engine, find_checkpoint(run_dir))
        loads.append(time.perf_counter() - start)
        start = time.perf_counter()
        _ = [t.clone() for t in load_file(str(raw)).values()]  # load_file maps lazily: copy to really read
        raw_reads.append(time.perf_counter() - start)
        size = directory_bytes(run_dir / "checkpoints")
        print(f"repeat {repeat}: checkpoint {size / 2**20:.0f} MiB saved in {saves[-1]:.2f} s (raw {raw.stat().st_size / 2**20:.0f} MiB "
              f"in {raw_writes[-1]:.2f} s); loaded in {loads[-1]:.2f} s (raw read {raw_reads[-1]:.2f} s)", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    save, raw_write = statistics.median(saves), statistics.median(raw_writes)
    print(f"resume (load) {statistics.median(loads):.2f} s vs raw read {statistics.median(raw_reads):.2f} s")
    print(json.dumps({"metric": "checkpoint_save_seconds_smollm2_135m", "value": round(save, 3), "reference": round(raw_write, 3),
                      "ratio": round(save / raw_write, 3), "unit": "s"}))


if __name__ == "__main__":
    main()
