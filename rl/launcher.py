"""`rl train`: validate everything, then start the learner and the rollout workers and watch them.

The run ends cleanly on success, on Ctrl-C and when any process dies: every child runs in its own
process group (so vLLM's or DeepSpeed's own children go with it) and asks the kernel to signal it
if this launcher dies (PR_SET_PDEATHSIG), so no process outlives the run.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from envs.source import check_sources, reward_sets
from rewards.registry import build_reward
from rl.config import Config, to_yaml
from rl.models import resolve_model


def set_parent_death_signal() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # vLLM logs every weight load at INFO
    return env


def spawn(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        args, env=child_env(), start_new_session=True, preexec_fn=set_parent_death_signal,
    )


def stop(processes: list[subprocess.Popen], grace_s: float = 15.0) -> None:
    """SIGTERM each live process group, then SIGKILL whatever is left after `grace_s`."""
    for proc in processes:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    for proc in processes:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in processes:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def make_run_dir(config: Config) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(config.run.output_dir) / f"{config.run.name}-{stamp}"
    suffix = 1
    while run_dir.exists():
        run_dir = Path(config.run.output_dir) / f"{config.run.name}-{stamp}-{suffix}"
        suffix += 1
    run_dir.mkdir(parents=True)
    return run_dir.resolve()


def interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def train(config: Config) -> int:
    # Installed explicitly: a launcher started in the background inherits SIGINT as ignored, and
    # SIGTERM (from a scheduler or `kill`) deserves the same orderly stop as Ctrl-C.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    # Bad rewards, distribution names and data files fail here, before any process starts.
    check_sources(config)
    for specs in reward_sets(config).values():
        build_reward(specs, config.reward_modules)
    model_path = resolve_model(config.model)  # a missing model fails before any process starts
    run_dir = make_run_dir(config)
    (run_dir / "config.yaml").write_text(to_yaml(config))
    print(f"[rl] run folder: {run_dir}", flush=True)

    learner = spawn([sys.executable, "-m", "learner.main", "--run-dir", str(run_dir), "--model-path", str(model_path)])
    processes = [learner]
    try:
        address = wait_for_address(run_dir / "learner_address", learner)
        for i in range(config.rollout.num_workers):
            processes.append(spawn([sys.executable, "-m", "rollout.main", "--connect", address, "--name", f"local-{i}"]))
        return supervise(learner, processes)
    except KeyboardInterrupt:
        print("\n[rl] interrupted: stopping the learner and the workers", flush=True)
        stop(processes)
        return 130
    finally:
        stop(processes)


def wait_for_address(path: Path, learner: subprocess.Popen, timeout_s: float = 900) -> str:
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        if learner.poll() is not None:
            raise SystemExit(f"[rl] the learner exited with code {learner.returncode} during start-up (see its log above)")
        if time.monotonic() > deadline:
            raise SystemExit(f"[rl] the learner did not start listening within {timeout_s:.0f} s")
        time.sleep(0.2)
    return path.read_text().strip()


def supervise(learner: subprocess.Popen, processes: list[subprocess.Popen]) -> int:
    """Wait for the learner; if any process dies first, stop everything and fail."""
    while True:
        if learner.poll() is not None:
            if learner.returncode != 0:
                print(f"[rl] the learner exited with code {learner.returncode}; stopping the workers", flush=True)
                return learner.returncode
            workers = [p for p in processes if p is not learner]
            deadline = time.monotonic() + 60
            while any(p.poll() is None for p in workers) and time.monotonic() < deadline:
                time.sleep(0.2)
            return 0
        for proc in processes[1:]:
            if proc.poll() is not None and proc.returncode != 0:
                print(f"[rl] a rollout worker (pid {proc.pid}) exited with code {proc.returncode}; stopping the run", flush=True)
                return 1
        time.sleep(0.5)
