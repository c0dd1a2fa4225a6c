"""Checkpoints: everything needed to continue a run exactly, written atomically.

    RUN/checkpoints/step-000004/
        deepspeed/            policy, optimizer and LR-scheduler state, as DeepSpeed saves and reloads it
        critic/               the same for PPO's critic (only with train.advantage: gae)
        policy/               the policy as a Hugging Face folder (safetensors + config + tokenizer): `rl export`
        rng.safetensors       torch random state
        trainer_state.json    step, policy version, task-source and curriculum state, W&B run id

A checkpoint is written to `.tmp-step-000004` and renamed when complete, so a crash mid-write
never leaves a folder that looks complete; `find_checkpoint` only considers renamed ones. With
several learner ranks the DeepSpeed saves are collective (each rank writes its partitions); rank 0
alone writes the rest and renames.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger("learner")

STATE_FILE = "trainer_state.json"
DEEPSPEED_TAG = "deepspeed"
CRITIC_TAG = "critic"
POLICY_DIR = "policy"


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was asked for; the message says where it looked."""


def checkpoint_root(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint, oldest first."""
    root = checkpoint_root(run_dir)
    found = []
    for path in root.glob("step-*") if root.is_dir() else ():
        suffix = path.name.removeprefix("step-")
        if suffix.isdigit() and (path / STATE_FILE).is_file():
            found.append((int(suffix), path))
    return sorted(found)


def find_checkpoint(run_dir: Path, step: int | None = None) -> Path:
    found = dict(complete_checkpoints(run_dir))
    if not found:
        raise CheckpointError(f"{run_dir} has no complete checkpoint in {checkpoint_root(run_dir)}")
    if step is None:
        return found[max(found)]
    if step not in found:
        raise CheckpointError(f"{run_dir} has no checkpoint of step {step}; it has steps {sorted(found)}")
    return found[step]


def save_checkpoint(
    engine, run_dir: Path, step: int, state: dict[str, Any], tokenizer_dir: str, keep_last: int, critic=None
) -> Path:
    """Write the checkpoint of `step` atomically and keep only the newest `keep_last`. Collective over learner ranks."""
    from learner.distributed import barrier, is_main
    from learner.engine import save_hf

    root = checkpoint_root(run_dir)
    final = root / step_dir_name(step)
    if (final / STATE_FILE).is_file():
        return final  # this step is already saved (e.g. a periodic save, then Ctrl-C)
    start = time.perf_counter()
    temporary = root / f".tmp-{step_dir_name(step)}"
    if is_main():
        if temporary.exists():
            shutil.rmtree(temporary)
        temporary.mkdir(parents=True)
    barrier()
    engine.save_checkpoint(str(temporary), tag=DEEPSPEED_TAG)
    if critic is not None:
        critic.save_checkpoint(str(temporary), tag=CRITIC_TAG)
    save_hf(engine, tokenizer_dir, str(temporary / POLICY_DIR))
    if is_main():
        save_file(rng_tensors(), str(temporary / "rng.safetensors"))
        (temporary / STATE_FILE).write_text(json.dumps({"step": step, **state}))
        fsync_tree(temporary)
        if final.exists():  # an incomplete folder from an older attempt
            shutil.rmtree(final)
        os.replace(temporary, final)
        prune(run_dir, keep_last)
        log.info("saved checkpoint %s in %.1f s", final, time.perf_counter() - start)
    barrier()
    return final


def load_checkpoint(engine, path: Path, critic=None) -> dict[str, Any]:
    """Restore the engines (weights, optimizer, scheduler) and torch's random state; return the trainer state."""
    check_zero_layout(engine, path / DEEPSPEED_TAG)
    if critic is not None:
        check_zero_layout(critic, path / CRITIC_TAG)
    load_path, _ = engine.load_checkpoint(str(path), tag=DEEPSPEED_TAG, load_optimizer_states=True, load_lr_scheduler_states=True)
    if load_path is None:
        raise CheckpointError(f"DeepSpeed could not load {path / DEEPSPEED_TAG}")
    if critic is not None:
        if not (path / CRITIC_TAG).is_dir():
            raise CheckpointError(f"{path} has no critic/ (saved by a run without a critic); resume with the run's own train.advantage")
        load_path, _ = critic.load_checkpoint(str(path), tag=CRITIC_TAG, load_optimizer_states=True, load_lr_scheduler_states=True)
        if load_path is None:
            raise CheckpointError(f"DeepSpeed could not load {path / CRITIC_TAG}")
    restore_rng(load_file(str(path / "rng.safetensors")))
    return json.loads((path / STATE_FILE).read_text())


def check_zero_layout(engine, folder: Path) -> None:
    """Refuse optimizer state saved partitioned (ZeRO) for an engine without ZeRO, or the reverse:
    DeepSpeed would otherwise fail deep inside, or resume without the optimizer's moments."""
    if not folder.is_dir():
        return
    partitioned = any(folder.glob("*optim_states.pt"))
    if partitioned != bool(engine.zero_optimization()):
        saved, now = ("ZeRO-partitioned", "without ZeRO") if partitioned else ("without ZeRO", "with ZeRO")
        raise CheckpointError(
            f"{folder} holds optimizer state saved {saved}, but this learner runs {now} (one fp32 rank runs without "
            f"ZeRO); resume with the learner ranks and train.dtype of the run that saved it")


def rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    return tensors


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["torch_cuda"])


def prune(run_dir: Path, keep_last: int) -> None:
    for _, path in complete_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


def fsync_tree(folder: Path) -> None:
    """Flush every file so that the rename below publishes data that is on disk."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def export_checkpoint(run_dir: Path, out_dir: Path, step: int | None = None) -> Path:
    """Copy a checkpoint's Hugging Face folder to `out_dir`; returns the checkpoint used."""
    path = find_checkpoint(run_dir, step)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise CheckpointError(f"{out_dir} exists and is not empty; choose a new folder")
    shutil.copytree(path / POLICY_DIR, out_dir, dirs_exist_ok=True)
    return path
