"""How `rl train` shares a CPU machine's cores among its local rollout workers."""

import pytest

from rl import launcher
from rl.config import load_config


@pytest.fixture
def cpu_machine(monkeypatch):
    monkeypatch.setattr(launcher, "has_cuda", lambda: False)
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)

    def with_cores(count):
        monkeypatch.setattr(launcher.os, "sched_getaffinity", lambda pid: set(range(count)))

    return with_cores


def test_local_workers_get_disjoint_even_shares_of_the_cores(cpu_machine):
    config = load_config("configs/quickstart.yaml", ["rollout.num_workers=2"])
    cpu_machine(5)
    assert [launcher.worker_cores(i, 2, config) for i in range(2)] == [[0, 1, 2], [3, 4]]
    cpu_machine(2)
    assert [launcher.worker_cores(i, 3, config) for i in range(3)] == [[0], [1], [0]]  # more workers than cores: shared


def test_no_pinning_for_one_worker_a_gpu_or_a_user_choice(cpu_machine, monkeypatch):
    cpu_machine(4)
    assert launcher.worker_cores(0, 1, load_config("configs/quickstart.yaml")) is None
    assert launcher.worker_cores(0, 2, load_config("configs/quickstart.yaml", ["rollout.cpu_threads='0-3'"])) is None
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0-3")
    assert launcher.worker_cores(0, 2, load_config("configs/quickstart.yaml")) is None
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND")
    monkeypatch.setattr(launcher, "has_cuda", lambda: True)
    assert launcher.worker_cores(0, 2, load_config("configs/quickstart.yaml")) is None


# A stand-in for the learner and worker commands: it records what it was given; the "learner" also
# writes the address file the launcher waits for.
RECORD = """
import json, os, sys, time
out, role, argv = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
with open(os.path.join(out, role + ".json"), "w") as handle:
    json.dump({"env": dict(os.environ), "argv": argv, "cores": sorted(os.sched_getaffinity(0))}, handle)
if role == "learner":
    with open(os.path.join(argv[argv.index("--run-dir") + 1], "learner_address"), "w") as handle:
        handle.write("tcp://127.0.0.1:9")
    time.sleep(1)
"""


def test_the_launcher_hands_each_child_its_part_of_a_fake_gpu_plan(tmp_path, monkeypatch, capsys, tiny_model_dir):
    import json
    import signal
    import sys

    monkeypatch.setenv("RL_FAKE_GPUS", "4x80")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")  # the caller's own selection: children must name the same GPUs
    out = tmp_path / "children"
    out.mkdir()
    real_spawn = launcher.spawn

    def recording_spawn(args, cores=None, env=None, **output):
        role = "learner" if "learner.main" in args else args[args.index("--name") + 1]
        return real_spawn([sys.executable, "-c", RECORD, str(out), role, json.dumps(args)], cores, env, **output)

    monkeypatch.setattr(launcher, "spawn", recording_spawn)
    config = load_config("configs/quickstart.yaml", [f"model={tiny_model_dir}", f"run.output_dir={tmp_path / 'runs'}",
                                                     "learner.world_size=2", "rollout.num_workers=2"])
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        assert launcher.train(config) == 0
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    children = {path.stem: json.loads(path.read_text()) for path in out.glob("*.json")}
    assert sorted(children) == ["learner", "local-0", "local-1"]

    learner = children["learner"]
    assert learner["argv"][2:4] == ["--include", "localhost:4,5"]  # DeepSpeed sets each rank's CUDA_VISIBLE_DEVICES from it
    assert "CUDA_VISIBLE_DEVICES" not in learner["env"] and "RL_FAKE_GPUS" not in learner["env"]
    (run_dir,) = (tmp_path / "runs").iterdir()
    for name, gpu in (("local-0", "6"), ("local-1", "7")):
        env = children[name]["env"]
        assert (env["CUDA_VISIBLE_DEVICES"], env["RL_GPU_MEMORY_UTILIZATION"]) == (gpu, "0.9000")
        assert env["RL_GPU_START_LOCK"] == str(run_dir / f"gpu-{gpu}.lock")
        assert "RL_FAKE_GPUS" not in env
        assert children[name]["cores"] == sorted(launcher.os.sched_getaffinity(0))  # GPU workers are not pinned
    printed = capsys.readouterr().out
    assert printed.startswith("[rl] plan (4 GPUs from RL_FAKE_GPUS")  # the run's log starts with the plan
    assert (run_dir / "plan.txt").read_text() in printed


def test_plan_flag_prints_the_cpu_plan_and_starts_nothing(tmp_path):
    import os
    import re
    import subprocess
    import sys

    from rl.plan_report import core_list

    overrides = ["rollout.num_workers=2", f"run.output_dir={tmp_path / 'runs'}"]
    done = subprocess.run([sys.executable, "-m", "rl.cli", "train", "configs/quickstart.yaml", "--plan", *overrides],
                          env={**os.environ, "RL_FAKE_GPUS": "0"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("[rl] plan (no GPU: CPU only")
    config = load_config("configs/quickstart.yaml", overrides)
    for i in range(2):
        cores = launcher.worker_cores(i, 2, config)
        cell = f"{core_list(cores)} \\(pinned\\)" if cores else r"all \(\S+\)"
        threads = len(cores) if cores else len(os.sched_getaffinity(0))
        # columns: process, device, memory, cores, threads, environment
        assert sum(bool(re.fullmatch(rf"  local-{i}\s+CPU\s+KV cache 1 GiB\s+{cell}\s+{threads}\s+-", line)) for line in lines) == 1
    assert not (tmp_path / "runs").exists()  # nothing started, no run folder
    refused = subprocess.run([sys.executable, "-m", "rl.cli", "train", "configs/quickstart.yaml", "--plan", "learner.world_size=2"],
                             env={**os.environ, "RL_FAKE_GPUS": "1x24@8.6"}, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert refused.stderr.strip() == ("error: learner.world_size=2 but this machine has 1 GPU: set learner.world_size=1 "
                                      "(one rank per GPU), or spread the ranks over nodes with learner.hostfile")
