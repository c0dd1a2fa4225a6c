"""This machine's devices, for the placement plan (`rl.placement`), and each child's half of that plan.

`detect_machine` lists the GPUs as this process's CUDA runtime numbers them (after the caller's
CUDA_VISIBLE_DEVICES), with name, memory and compute capability. It asks a short-lived Python
process, so that the launcher, which lives as long as the run, never holds a CUDA context (and its
memory) on GPU 0. `RL_FAKE_GPUS` replaces the list, for tests and for `rl train --plan` of a
machine one is not on; only the plan reads it: "4x80" is four 80 GiB GPUs of compute capability
9.0, "2x16@7.0" two pre-Ampere 16 GiB ones, "1x80@9.0,1x24@8.6" a mixed pair, "0" none.

The child side: a learner rank or a rollout engine resolves the `auto` settings for the device it
actually runs on with the same rules as the plan, and an engine takes the memory budget and the
start-up lock the launcher put in its environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator

from rl.placement import (
    DEDICATED_BUDGET,
    MEMORY_ENV,
    START_LOCK_ENV,
    VISIBLE_ENV,
    Gpu,
    Machine,
    rollout_dtype_for,
    train_dtype_for,
)

FAKE_ENV = "RL_FAKE_GPUS"
FAKE_GROUP = re.compile(r"^(\d+)x(\d+(?:\.\d+)?)(?:@(\d+)\.(\d+))?$")

PROBE = """
import json, torch
gpus = []
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    gpus.append({"index": i, "name": p.name, "memory_gib": p.total_memory / 2**30, "capability": [p.major, p.minor]})
print(json.dumps(gpus))
"""


def detect_machine() -> Machine:
    cores = tuple(sorted(os.sched_getaffinity(0)))
    cpu_count = os.cpu_count() or len(cores)
    if FAKE_ENV in os.environ:
        return Machine(with_visible_ids(parse_fake_gpus(os.environ[FAKE_ENV])), cores, cpu_count, source=FAKE_ENV,
                       cpp_compiler=cpp_compiler())
    return Machine(with_visible_ids(probe_gpus()), cores, cpu_count, source="torch", cpp_compiler=cpp_compiler())


def cpp_compiler() -> str | None:
    """The C++ compiler torch inductor would call (its `CXX`, else g++) when it is on PATH, else None."""
    return shutil.which(os.environ.get("CXX") or "g++")


def parse_fake_gpus(spec: str) -> list[Gpu]:
    """RL_FAKE_GPUS: comma-separated COUNTxGIB[@MAJOR.MINOR] groups (capability default 9.0); "0" or "": no GPU."""
    gpus: list[Gpu] = []
    for group in spec.replace(" ", "").split(","):
        if group in ("", "0"):
            continue
        match = FAKE_GROUP.match(group)
        if not match:
            raise ValueError(f"{FAKE_ENV}={spec!r}: write COUNTxGIB[@MAJOR.MINOR] groups, e.g. 4x80 or 2x16@7.0,1x24@8.6")
        count, gib, major, minor = match.groups()
        capability = (int(major), int(minor)) if major else (9, 0)
        for _ in range(int(count)):
            gpus.append(Gpu(len(gpus), "fake GPU", float(gib), capability))
    return gpus


def probe_gpus() -> list[Gpu]:
    import torch

    if not torch.cuda.is_available():  # asks the driver for a count; creates no context
        return []
    try:
        done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, check=True)
    except (subprocess.SubprocessError, OSError) as err:
        raise RuntimeError(f"could not list this machine's GPUs with torch ({err}); check nvidia-smi") from None
    return [Gpu(g["index"], g["name"], g["memory_gib"], tuple(g["capability"])) for g in json.loads(done.stdout.strip().splitlines()[-1])]


def with_visible_ids(gpus: list[Gpu]) -> tuple[Gpu, ...]:
    """Name each GPU as the caller's CUDA_VISIBLE_DEVICES does, so that a child's own list points at the same device."""
    entries = [e.strip() for e in os.environ.get(VISIBLE_ENV, "").split(",") if e.strip()]
    if len(entries) < len(gpus):
        return tuple(gpus)
    return tuple(Gpu(g.index, g.name, g.memory_gib, g.capability, visible_id=entries[g.index]) for g in gpus)


# ---------------------------------------------------------------- the child side


def this_gpu() -> Gpu | None:
    """The GPU this process computes on (a learner rank's LOCAL_RANK, else GPU 0 of its own list), or None."""
    import torch

    if not torch.cuda.is_available():
        return None
    index = int(os.environ.get("LOCAL_RANK", "0"))
    if index >= torch.cuda.device_count():
        index = 0
    p = torch.cuda.get_device_properties(index)
    return Gpu(index, p.name, p.total_memory / 2**30, (p.major, p.minor))


def resolve_train_dtype(dtype: str) -> str:
    """train.dtype for this process's device: auto is bfloat16 on Ampere and later, else float32."""
    gpu = this_gpu()
    return train_dtype_for(dtype, [gpu] if gpu else [])


def effective_zero_stage(zero_stage: int, world_size: int, train_dtype: str) -> int:
    """The ZeRO stage a learner engine runs: 0 for a single fp32 rank (nothing to partition, and ZeRO's
    optimizer would keep a second fp32 copy of the weights), else `zero_stage`. `train_dtype` is resolved."""
    return 0 if world_size == 1 and train_dtype == "float32" else zero_stage


def resolve_rollout_dtype(dtype: str) -> str:
    """rollout.dtype for this process's device: auto is float32 on CPU, bfloat16 from Ampere on, float16 before."""
    if dtype != "auto":
        return dtype
    gpu = this_gpu()
    return rollout_dtype_for(dtype, [gpu] if gpu else None)


def engine_memory_utilization(utilization: float | None = None, gib: float | None = None) -> float:
    """This engine's share of its GPU: the launcher's plan, else the config's budget, else vLLM's 0.9."""
    if MEMORY_ENV in os.environ:
        return float(os.environ[MEMORY_ENV])
    if utilization is not None:
        return utilization
    if gib is not None:
        gpu = this_gpu()
        if gpu is not None:
            return min(1.0, gib / gpu.memory_gib)
    return DEDICATED_BUDGET


@contextlib.contextmanager
def engine_start_lock() -> Iterator[None]:
    """Held while a vLLM engine starts: vLLM sizes its KV cache from the GPU's free memory, so two engines
    starting at once on one GPU would each count the other's allocations as their own."""
    path = os.environ.get(START_LOCK_ENV)
    if not path:
        yield
        return
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
