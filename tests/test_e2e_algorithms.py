"""PPO (critic + GAE) and DAPO (dynamic sampling, clip-higher, asynchronous rollouts) through the real loop."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.test_e2e import REPO, fuse_like_vllm, run_dir_of, write_config

pytestmark = pytest.mark.e2e


def train(tmp_path, tiny_model_dir, *overrides, **extra):
    config = write_config(tmp_path, tiny_model_dir, **extra)
    result = subprocess.run([sys.executable, "-m", "rl.cli", "train", str(config), *overrides], cwd=REPO, timeout=600, check=False,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    run_dir = run_dir_of(tmp_path)
    return run_dir, [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_worker_holds_final_weights(run_dir, version):
    from safetensors import safe_open

    final = load_file(str(run_dir / "final" / "model.safetensors"))
    dump = run_dir / "worker-0-weights.safetensors"
    with safe_open(str(dump), "pt") as f:
        assert f.metadata()["version"] == str(version)
    for name, tensor in load_file(str(dump)).items():
        assert torch.equal(tensor, fuse_like_vllm(final, name)), name


def test_ppo_trains_policy_and_critic_and_checkpoints_both(tmp_path, tiny_model_dir):
    run_dir, records = train(tmp_path, tiny_model_dir, "train.algorithm=ppo", "train.kl_coef=0.05", "train.kl_in=reward",
                             "critic.lr=1e-3", checkpoint_every=2, no_eval=True)
    assert [r["policy_version"] for r in records] == [1, 2]
    for r in records:
        assert r["loss/value"] > 0 and "critic/value_mean" in r and "critic/return_mean" in r
        assert r["loss/kl"] == 0.0  # the KL shapes the rewards, it is not a loss term
        assert r["critic/explained_variance"] <= 1.0 and r["advantage/min"] < r["advantage/max"]  # PPO's token advantages
    # step 1 trains the reference's own weights; step 2 a policy that step 1 moved away from it
    assert records[0]["train/kl"] == pytest.approx(0.0, abs=1e-6) and records[1]["train/kl"] > 1e-6
    assert records[1]["critic/value_mean"] != 0.0  # the value head started at 0 and was trained
    checkpoint = run_dir / "checkpoints" / "step-000002"
    assert (checkpoint / "critic").is_dir() and (checkpoint / "deepspeed").is_dir()
    assert_worker_holds_final_weights(run_dir, 2)


def test_dapo_with_dynamic_sampling_and_async_rollouts(tmp_path, tiny_model_dir):
    reward = f"[{{name: '{REPO / 'tests' / 'rewards_for_tests.py'}:varies_on_add_2d_only'}}]"
    # the random tiny model never ends an answer, so overlong filtering would mask every sample: off here
    # (tests/test_algorithms.py checks the filter); everything else is DAPO
    run_dir, records = train(tmp_path, tiny_model_dir, "train.algorithm=dapo", "train.overlong_filter=false",
                             "rollout.async=true", f"rewards={reward}", "train.steps=3", no_eval=True)
    assert [r["policy_version"] for r in records] == [1, 2, 3]
    # add_1d groups all score 0: dynamic sampling drops them and samples more until 2 groups carry signal
    assert all(r["rollout/groups_trained"] == 2 for r in records)
    assert sum(r["rollout/groups_generated"] for r in records) > 6 and max(r["rollout/dynamic_sampling_rounds"] for r in records) > 1
    assert all(r["groups/add_1d/zero_spread_frac"] == 1.0 for r in records if "groups/add_1d/zero_spread_frac" in r)
    # completions.jsonl: every generated sample, the groups dynamic sampling dropped included (not trained)
    rows = [json.loads(line) for line in (run_dir / "completions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * sum(r["rollout/groups_generated"] for r in records)
    assert sum(r["trained"] for r in rows) == 3 * 2 * 2 and not any(r["trained"] for r in rows if r["distribution"] == "add_1d")
    audit = [json.loads(line) for line in (run_dir / "trained_samples.jsonl").read_text().splitlines()]
    trained_tasks = [task for step in audit for task in step["task_ids"]]
    assert trained_tasks and all(task.startswith("add_2d/") for task in trained_tasks)
    # async: steps 2 and 3 first train on samples generated while the step before trained (one version old)
    assert records[0]["rollout/staleness_mean"] == 0.0 and records[1]["rollout/staleness_mean"] > 0
    assert all(r["rollout/dropped_stale"] == 0 for r in records)
    # step 1's samples come from the learner's own weights: every importance weight pi_learner / pi_sampler
    # is 1 up to float noise, which holds only if vLLM's logprobs line up with the learner's token by token
    assert records[0]["train/is_weight"] == pytest.approx(1.0, abs=1e-4)
    assert_worker_holds_final_weights(run_dir, 3)
