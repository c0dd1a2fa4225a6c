"""The learner as 2 DeepSpeed ranks on CPU (gloo) with ZeRO-3: rank 0 talks to the worker, every rank trains."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_e2e import (
    REPO,
    assert_no_process_mentions,
    check_run,
    run_dir_of,
    write_config,
)

pytestmark = pytest.mark.e2e


def train(folder: Path, tiny_model_dir, *overrides, **extra) -> tuple[Path, list[dict], str]:
    folder.mkdir()
    config = write_config(folder, tiny_model_dir, **extra)
    result = subprocess.run([sys.executable, "-m", "rl.cli", "train", str(config), *overrides], cwd=REPO, timeout=600, check=False,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    run_dir = run_dir_of(folder)
    return run_dir, [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()], result.stdout + result.stderr


def test_two_zero3_ranks_train_and_the_worker_gets_the_gathered_weights(tmp_path, tiny_model_dir):
    run_dir, records, stdout = train(tmp_path / "two", tiny_model_dir, "learner.world_size=2", "train.zero_stage=3")
    # the worker's live weights equal the learner's final weights, gathered from both ranks' partitions
    check_run(run_dir, workers=1)
    assert "2 learner rank(s), ZeRO stage 3" in stdout
    assert_no_process_mentions(str(run_dir))
    # the same first step on one rank: the batch split over two ranks must give the same loss and gradient
    _, single, _ = train(tmp_path / "one", tiny_model_dir, "train.zero_stage=3", steps=1, no_eval=True)
    for key in ("loss/total", "loss/pg", "train/grad_norm"):
        assert records[0][key] == pytest.approx(single[0][key], rel=1e-4, abs=1e-7), key
    assert records[0]["rollout/reward_mean"] == single[0]["rollout/reward_mean"]  # same samples (seeded)


def test_two_zero2_ranks_rank_0_publishes_its_full_copy(tmp_path, tiny_model_dir):
    from tests.test_e2e_algorithms import assert_worker_holds_final_weights

    run_dir, records, _ = train(tmp_path / "two", tiny_model_dir, "learner.world_size=2", "train.zero_stage=2",
                                steps=1, no_eval=True)
    assert [r["policy_version"] for r in records] == [1] and records[0]["train/grad_norm"] > 0
    assert_worker_holds_final_weights(run_dir, 1)
