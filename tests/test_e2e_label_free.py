"""A label-free run on the tiny model: the rewards of training tasks receive no answer, evaluation's do."""

import json
import subprocess
import sys

import pytest

from tests.test_e2e import REPO, run_dir_of

pytestmark = pytest.mark.e2e

RECORDER = REPO / "tests" / "rewards_for_tests.py"


def test_training_rewards_never_receive_the_answer_and_evaluation_rewards_do(tmp_path, tiny_model_dir):
    seen = tmp_path / "seen"
    seen.mkdir()
    recorder = f"{{name: '{RECORDER}:records_what_it_sees', log_dir: '{seen}'}}"
    config = tmp_path / "label_free.yaml"
    config.write_text("\n".join([
        f"model: {tiny_model_dir}",
        f"run: {{name: lf, output_dir: {tmp_path / 'runs'}, seed: 1}}",
        "env: {label_free: true, sources: [{type: arithmetic, distributions: [add_1d], few_shot: 1}], train_size: 20, test_size: 2}",
        f"rewards: [{{name: format_length}}, {recorder}]",
        f"eval: {{every: 1, rewards: [{{name: boxed_answer}}, {recorder}]}}",
        "rollout: {num_workers: 1, prompts_per_step: 2, samples_per_prompt: 2, max_new_tokens: 8, max_model_len: 512, kv_cache_gib: 0.25}",
        "train: {steps: 2, lr: 1.0e-3, micro_batch_size: 2, threads: 1}",
        "logging: {wandb: disabled, progress: false}",
        "transport: {heartbeat_timeout_s: 5, learner_timeout_s: 5, no_workers_wait_s: 5}",
    ]) + "\n")
    result = subprocess.run([sys.executable, "-m", "rl.cli", "train", str(config)], cwd=REPO, timeout=600,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    records = [json.loads(line) for path in seen.glob("seen-*.jsonl") for line in path.read_text().splitlines()]
    train = [r for r in records if r["reward_set"] == "0:arithmetic"]
    held_out = [r for r in records if r["reward_set"] == "0:arithmetic:eval"]
    assert len(train) == 2 * 2 * 2 and len(held_out) == 3 * 2  # 2 steps x 2 prompts x 2 samples; before, step 1, after
    assert all(r["answer"] == "" and r["metadata"] == {} for r in train), [r for r in train if r["answer"] or r["metadata"]][:2]
    for r in held_out:
        meta = r["metadata"]
        assert r["answer"] == str(meta["a"] + meta["b"]) and meta["op"] == "add"
    run_dir = run_dir_of(tmp_path)
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2]
    assert all(s["rollout/accuracy"] is None for s in steps), "training has no correctness component to claim accuracy with"
    assert all("reward/add_1d/format_length.length" in s for s in steps)
    after = json.loads((run_dir / "eval_after.json").read_text())["distributions"]["add_1d"]
    assert after["accuracy"] is not None and after["tasks"] == 2  # evaluation judges correctness with boxed_answer
