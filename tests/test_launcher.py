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
