"""One fp32 learner rank runs without ZeRO; a checkpoint whose optimizer layout differs is refused clearly."""

import pytest

from learner.checkpoint import CheckpointError, check_zero_layout
from rl.devices import effective_zero_stage


def test_one_fp32_rank_runs_without_zero_and_everything_else_keeps_its_stage():
    assert effective_zero_stage(1, world_size=1, train_dtype="float32") == 0
    assert effective_zero_stage(3, world_size=1, train_dtype="float32") == 0
    assert effective_zero_stage(1, world_size=1, train_dtype="bfloat16") == 1  # ZeRO keeps the fp32 masters bf16 needs
    assert effective_zero_stage(3, world_size=2, train_dtype="float32") == 3
    assert effective_zero_stage(0, world_size=2, train_dtype="float32") == 0


class FakeEngine:
    def __init__(self, zero: bool):
        self.zero = zero

    def zero_optimization(self) -> bool:
        return self.zero


def test_partitioned_optimizer_state_is_refused_by_an_engine_without_zero(tmp_path):
    (tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="saved ZeRO-partitioned, but this learner runs without ZeRO"):
        check_zero_layout(FakeEngine(zero=False), tmp_path)
    check_zero_layout(FakeEngine(zero=True), tmp_path)


def test_unpartitioned_state_is_refused_by_a_zero_engine(tmp_path):
    (tmp_path / "mp_rank_00_model_states.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="saved without ZeRO, but this learner runs with ZeRO"):
        check_zero_layout(FakeEngine(zero=True), tmp_path)
    check_zero_layout(FakeEngine(zero=False), tmp_path)
