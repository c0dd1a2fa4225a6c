"""The machine the plan sees (RL_FAKE_GPUS, CUDA_VISIBLE_DEVICES), and each child's side of the plan on this CPU."""

import threading
import time

import pytest
import torch

from learner.engine import check_dtype
from learner.host_staging import HostStaging, stage_bucket
from rl import devices
from rl.placement import MEMORY_ENV, START_LOCK_ENV, PlanError


def test_fake_gpus_describe_count_memory_and_capability(monkeypatch):
    monkeypatch.setenv("RL_FAKE_GPUS", "2x16@7.0,1x24.5@8.6")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    machine = devices.detect_machine()
    assert [(g.index, g.memory_gib, g.capability, g.bf16, g.device_id) for g in machine.gpus] == [
        (0, 16.0, (7, 0), False, "0"), (1, 16.0, (7, 0), False, "1"), (2, 24.5, (8, 6), True, "2")]
    assert machine.source == "RL_FAKE_GPUS"
    assert devices.parse_fake_gpus("4x80")[3].capability == (9, 0)
    assert devices.parse_fake_gpus("0") == []
    with pytest.raises(ValueError, match="COUNTxGIB"):
        devices.parse_fake_gpus("four")


def test_gpus_keep_the_callers_names_for_them(monkeypatch):
    monkeypatch.setenv("RL_FAKE_GPUS", "2x80")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,GPU-1234")
    assert [g.device_id for g in devices.detect_machine().gpus] == ["5", "GPU-1234"]


def test_no_gpu_here_resolves_auto_to_the_cpu_defaults():
    assert devices.resolve_train_dtype("auto") == "float32"
    assert devices.resolve_rollout_dtype("auto") == "float32"
    assert devices.resolve_rollout_dtype("bfloat16") == "bfloat16"  # explicit: slow on this CPU, but allowed
    assert check_dtype("auto") == torch.float32
    with pytest.raises(PlanError, match="needs a GPU"):
        check_dtype("bfloat16")


def test_an_engine_takes_the_plans_budget_first(monkeypatch):
    monkeypatch.delenv(MEMORY_ENV, raising=False)
    assert devices.engine_memory_utilization() == 0.9
    assert devices.engine_memory_utilization(0.3) == 0.3
    monkeypatch.setenv(MEMORY_ENV, "0.2500")
    assert devices.engine_memory_utilization(0.3) == 0.25


def test_engines_on_one_gpu_start_one_at_a_time(monkeypatch, tmp_path):
    monkeypatch.setenv(START_LOCK_ENV, str(tmp_path / "gpu-0.lock"))
    events = []

    def engine(name: str, hold_s: float) -> None:
        with devices.engine_start_lock():
            events.append(f"{name} starts")
            time.sleep(hold_s)
            events.append(f"{name} ready")

    first = threading.Thread(target=engine, args=("a", 0.3))
    first.start()
    time.sleep(0.1)
    second = threading.Thread(target=engine, args=("b", 0.0))
    second.start()
    first.join()
    second.join()
    assert events == ["a starts", "a ready", "b starts", "b ready"]


def test_staged_bucket_is_cast_into_one_reused_buffer():
    staging = HostStaging(pin=False)  # pinned on CUDA; this machine has none
    weights = [("a", torch.randn(3, 4)), ("b", torch.randn(5)), ("c", torch.randn(2, 2, 2))]
    nbytes = sum(t.numel() for _, t in weights) * 2
    first = stage_bucket(weights, torch.bfloat16, staging.buffer(0, nbytes))
    assert [(name, t.shape, t.dtype) for name, t in first] == [(n, w.shape, torch.bfloat16) for n, w in weights]
    assert all(torch.equal(t, w.to(torch.bfloat16)) for (_, t), (_, w) in zip(first, weights))
    base = staging.buffer(0, nbytes).data_ptr()
    assert first[0][1].data_ptr() == base and first[2][1].data_ptr() == base + (12 + 5) * 2  # packed back to back
    later = [(n, w * 2) for n, w in weights]
    second = stage_bucket(later, torch.bfloat16, staging.buffer(0, nbytes))
    assert second[0][1].data_ptr() == base  # the same memory again: the next publication overwrites this bucket
    assert torch.equal(second[1][1], (weights[1][1] * 2).to(torch.bfloat16))
    assert staging.buffer(0, nbytes + 2).numel() == nbytes + 2  # a bucket that changed size gets a new buffer


def test_publication_bucket_goes_through_its_staging_buffer():
    from learner.engine import materialise_bucket

    params = [("w", torch.nn.Parameter(torch.randn(4, 4))), ("b", torch.nn.Parameter(torch.randn(4)))]
    staging = HostStaging(pin=False)
    out = materialise_bucket(params, torch.bfloat16, False, (staging, 3))
    assert [n for n, _ in out] == ["w", "b"] and all(torch.equal(t, p.detach().to(torch.bfloat16)) for (_, t), (_, p) in zip(out, params))
    assert out[0][1].data_ptr() == staging.buffers[3].data_ptr()
    plain = materialise_bucket(params, torch.float32, False)  # no staging: CPU parameters already in dtype are views
    assert plain[0][1].data_ptr() == params[0][1].data_ptr()
