"""The real loop on a tiny model: `rl train` -> learner (DeepSpeed) + vLLM workers over ZeroMQ."""

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.e2e

REPO = Path(__file__).parents[1]


TEST_REWARDS = (
    f"[{{name: boxed_answer, weight: 1.0}}, {{name: '{REPO / 'tests' / 'rewards_for_tests.py'}:shorter_is_better', weight: 1.0}},"
    f" {{name: '{REPO / 'tests' / 'rewards_misbehaving.py'}:raises', weight: 0.0, on_error: 0.0}}]"
)


def write_config(tmp_path: Path, model_dir: Path, **extra) -> Path:
    sources = extra.get("sources", "[{type: arithmetic, distributions: [add_1d, add_2d]}]")
    lines = [
        f"model: {model_dir}",
        f"run: {{name: e2e, output_dir: {tmp_path / 'runs'}, seed: 1}}",
        f"env: {{sources: {sources}, train_size: 20, test_size: 2}}",
        "rollout: {num_workers: %d, prompts_per_step: 2, samples_per_prompt: 2, max_new_tokens: 8, max_model_len: 512,"
        " kv_cache_gib: 0.25, debug_dump_weights: true, bucket_mb: 1}" % extra.get("num_workers", 1),
        "train: {steps: %d, lr: 1.0e-3, micro_batch_size: 2, threads: 1}" % extra.get("steps", 2),
        "logging: {wandb: offline, progress: false}",
        # a random model never earns the boxed reward; this user reward gives the groups variance
        f"rewards: {TEST_REWARDS}",
    ]
    if "eval_every" in extra:
        lines.append(f"eval: {{every: {extra['eval_every']}}}")
    if "curriculum" in extra:
        lines.append(f"curriculum: {extra['curriculum']}")
    if extra.get("no_eval"):
        lines.append("eval: {before: false, after: false}")
    transport = {"heartbeat_timeout_s": 5, "learner_timeout_s": 5, "no_workers_wait_s": 5}
    if "wait_for_workers" in extra:
        transport["wait_for_workers"] = extra["wait_for_workers"]
    lines.append("transport: {%s}" % ", ".join(f"{k}: {v}" for k, v in transport.items()))
    lines.append("checkpoint: {every: %d, keep_last: 2}" % extra.get("checkpoint_every", 0))
    path = tmp_path / "e2e.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def fuse_like_vllm(hf: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """The HF tensor(s) that vLLM's fused parameter `name` is made of."""
    if "qkv_proj" in name:
        return torch.cat([hf[name.replace("qkv_proj", p)] for p in ("q_proj", "k_proj", "v_proj")])
    if "gate_up_proj" in name:
        return torch.cat([hf[name.replace("gate_up_proj", p)] for p in ("gate_proj", "up_proj")])
    if name == "lm_head.weight" and name not in hf:
        return hf["model.embed_tokens.weight"]  # tied
    return hf[name]


def run_dir_of(tmp_path: Path) -> Path:
    (run_dir,) = list((tmp_path / "runs").iterdir())
    return run_dir


def assert_no_process_mentions(text: str) -> None:
    import psutil

    leftovers = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if text in " ".join(proc.info["cmdline"] or []):
                leftovers.append(proc.info)
        except psutil.Error:
            pass
    assert not leftovers, f"processes outlived the run: {leftovers}"


# A KL penalty and two epochs per step, so that train/kl and train/clip_frac have something to measure:
# the second update sees the policy the first one moved, and a tight clip range makes that move clip.
KL_AND_CLIPPING = ["train.kl_coef=0.05", "train.epochs=2", "train.clip_eps=0.01"]


def check_run(run_dir: Path, workers: int, kl_and_clipping: bool = False) -> None:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert [r["policy_version"] for r in records] == [1, 2]
    for key in ("rollout/reward_mean", "rollout/accuracy", "train/kl", "train/clip_frac", "train/grad_norm",
                "train/lr", "rollout/tokens_per_s", "train/learner_tokens_per_s", "weight_sync/seconds",
                "rollout/dropped_stale", "train/logprob_diff", "rollout/response_len_max"):
        assert all(key in r for r in records), key
    assert records[0]["train/grad_norm"] > 0
    # synchronous: the step's rollout span holds the engines' generate time, so their rate is the higher one
    assert all(0 < r["rollout/generate_seconds"] and r["rollout/generate_tokens_per_s"] >= r["rollout/tokens_per_s"] / workers
               for r in records)
    if kl_and_clipping:
        assert all(r["train/kl"] > 0 for r in records), "the policy moved away from the reference, yet no KL"
        # only groups with different rewards have advantages to clip: the arithmetic ones (shorter_is_better)
        with_advantages = [r for r in records if r.get("curriculum/add_1d/step_samples", 1) > 0]
        assert with_advantages and all(r["train/clip_frac"] > 0 for r in with_advantages), "ratios moved, yet nothing clipped"
    else:  # one update per step, no reference model: the ratio is exactly 1
        assert all(r["train/kl"] == 0 and r["train/clip_frac"] == 0 for r in records)
    assert all(r["reward_errors/raises"] == 4 for r in records), "a raising reward must be counted, not crash the run"
    assert all(r["reward_errors/shorter_is_better"] == 0 for r in records)
    assert all(any(k.startswith("reward/") and k.endswith("/shorter_is_better") for k in r) for r in records)

    final = load_file(str(run_dir / "final" / "model.safetensors"))
    for worker_id in range(workers):
        dump_path = run_dir / f"worker-{worker_id}-weights.safetensors"
        live = load_file(str(dump_path))
        from safetensors import safe_open

        with safe_open(str(dump_path), "pt") as f:
            assert f.metadata()["version"] == "2"
        assert live, "the worker dumped no weights"
        for name, tensor in live.items():
            expected = fuse_like_vllm(final, name)
            assert tensor.shape == expected.shape, name
            assert torch.equal(tensor, expected), f"worker {worker_id}: {name} differs from the learner's"
    for name in ("eval_before.json", "eval_after.json", "curves.png", "config.yaml"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "wandb").glob("offline-run-*")), "no offline W&B run was written"


COMPLETION_KEYS = {"step", "group", "distribution", "task_id", "prompt", "completion", "reward", "reward_components", "advantage",
                   "correct", "length", "finish_reason", "policy_version", "worker"}
DIAGNOSTICS = ["train/entropy", "groups/zero_spread_frac", "advantage/min", "advantage/mean", "advantage/max",
               "rollout/response_len_wrong", "time/rollout_wait_seconds", "time/no_grad_seconds",
               "time/forward_backward_seconds", "time/optimizer_seconds", "time/publish_seconds", "time/eval_seconds",
               "time/checkpoint_seconds", "time/step_seconds", "memory/learner_peak_rss_gib", "memory/worker0_peak_rss_gib"]


def check_monitoring(run_dir: Path, samples_per_step: int, approx_kl: bool, vocab_size: int) -> None:
    """The diagnostics in metrics.jsonl; every sample of every step in completions.jsonl; the W&B table of them."""
    from tests.wandb_history import wandb_tables

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for key in DIAGNOSTICS + (["train/approx_kl"] if approx_kl else []):
        assert all(key in r for r in records), key
    assert all(0 < r["train/entropy"] <= math.log(vocab_size) + 1e-3 for r in records)  # at most a uniform policy's
    assert all(0.0 <= r["groups/zero_spread_frac"] <= 1.0 for r in records)
    assert all(r["advantage/min"] <= r["advantage/mean"] <= r["advantage/max"] for r in records)
    assert all(r["memory/learner_peak_rss_gib"] > 0.1 and r["memory/worker0_peak_rss_gib"] > 0.1 for r in records)
    rows = [json.loads(line) for line in (run_dir / "completions.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [s for s in (1, 2) for _ in range(samples_per_step)]
    assert all(COMPLETION_KEYS <= set(r) for r in rows)
    for step in (1, 2):
        groups = [r["group"] for r in rows if r["step"] == step]
        assert groups == sorted(groups), "a group's samples must be consecutive"
    splits = json.loads((run_dir / "tasks.json").read_text())
    tasks = {t["task_id"]: t for tasks_of in splits["train"].values() for t in tasks_of}
    for r in rows:  # the question as the env wrote it (the task's last user message), not the chat template
        assert r["prompt"] == [m for m in tasks[r["task_id"]]["messages"] if m["role"] == "user"][-1]["content"]
        assert "<|im_start|>" not in r["prompt"]
    folder = (run_dir / "wandb" / "latest-run").resolve()
    tables = wandb_tables(folder, "completions")
    assert sorted(tables) == [1, 2], "the W&B run holds no completions table per step"
    components = sorted({f"reward/{name}" for r in rows for name in r["reward_components"]})
    for step, table in tables.items():
        assert table["columns"] == ["step", "distribution", "prompt", "completion", "reward", *components, "advantage",
                                    "correct", "length", "finish_reason", "policy_version", "worker"]
        step_rows = [r for r in rows if r["step"] == step]  # 16 rows allowed: the whole step, in step order
        assert [row[3] for row in table["data"]] == [r["completion"] for r in step_rows]
        assert [row[0] for row in table["data"]] == [step] * len(step_rows)


def test_train_two_steps_weights_reach_the_worker(tmp_path, tiny_model_dir):
    """Also: two sources in one run (arithmetic + Knights and Knaves, each with its own reward set), eval every step."""
    kk_rewards = f"[{{name: knights_knaves}}, {{name: format, weight: 0.5}}, {{name: '{REPO / 'tests' / 'rewards_misbehaving.py'}:raises', weight: 0.0}}]"
    sources = f"[{{type: arithmetic, distributions: [add_1d]}}, {{type: knights_knaves, distributions: [kk_3p], rewards: {kk_rewards}}}]"
    config = write_config(tmp_path, tiny_model_dir, sources=sources, eval_every=1)
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "rl.cli", "train", str(config), *KL_AND_CLIPPING], cwd=REPO, timeout=600,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert result.stdout.startswith("[rl] plan (")  # the log starts with the placement plan
    run_dir = run_dir_of(tmp_path)
    check_run(run_dir, workers=1, kl_and_clipping=True)
    vocab_size = json.loads((Path(tiny_model_dir) / "config.json").read_text())["vocab_size"]
    check_monitoring(run_dir, samples_per_step=2 * 2, approx_kl=True, vocab_size=vocab_size)
    initial = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    final = load_file(str(run_dir / "final" / "model.safetensors"))
    assert any(not torch.equal(initial[k], final[k]) for k in final), "training did not change the weights"
    assert "held-out evaluation after training" in result.stdout and "held-out accuracy (mean@1)" in result.stdout
    assert "held-out evaluation at step 1" in result.stdout
    step_eval = json.loads((run_dir / "eval" / "step-000001.json").read_text())
    assert step_eval["policy_version"] == 1 and list(step_eval["distributions"]) == ["add_1d", "kk_3p", "overall"]
    after = json.loads((run_dir / "eval_after.json").read_text())["distributions"]
    assert after["kk_3p"]["tasks"] == 2 and after["kk_3p"]["reward_mean"] <= 2.0 + 0.5  # the K&K set's scale, not boxed_answer's
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "eval/kk_3p/accuracy" in records[0] and "eval/kk_3p/accuracy" not in records[1]  # step 2 is the final eval
    assert records[0]["curriculum/kk_3p/probability"] == records[0]["curriculum/add_1d/probability"] == 0.5  # uniform
    assert sum(r["curriculum/kk_3p/step_samples"] + r["curriculum/add_1d/step_samples"] for r in records) == 2 * 2 * 2
    assert (run_dir / "curriculum.png").is_file()
    # seeded: these 2 steps draw K&K prompts, so its own reward set must show up under its own keys
    assert sum(r["curriculum/kk_3p/step_samples"] for r in records) > 0
    kk_keys = {k for r in records for k in r if k.startswith("reward/kk_3p/")}
    assert kk_keys == {"reward/kk_3p/knights_knaves", "reward/kk_3p/format", "reward/kk_3p/raises"}
    assert "wandb sync" in result.stdout
    assert_no_process_mentions(str(run_dir))
    print(f"e2e run took {time.monotonic() - start:.1f} s")


def test_a_worker_started_with_rl_rollout_joins_and_gets_the_weights(tmp_path, tiny_model_dir):
    config = write_config(tmp_path, tiny_model_dir, num_workers=1, wait_for_workers=2)
    train = subprocess.Popen([sys.executable, "-m", "rl.cli", "train", str(config)], cwd=REPO,
                             stdout=(tmp_path / "train.log").open("w"), stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "runs").glob("*/learner_address")):
            assert train.poll() is None, (tmp_path / "train.log").read_text()[-5000:]
            assert time.monotonic() < deadline, "the learner never wrote its address"
            time.sleep(0.5)
        run_dir = run_dir_of(tmp_path)
        address = (run_dir / "learner_address").read_text().strip()
        joiner = subprocess.Popen([sys.executable, "-m", "rl.cli", "rollout", "--connect", address, "--name", "joiner"], cwd=REPO)
        train.wait(timeout=600)
        assert train.returncode == 0, (tmp_path / "train.log").read_text()[-5000:]
        assert joiner.wait(timeout=60) == 0
        check_run(run_dir, workers=2)
    finally:
        for proc in (train,):
            if proc.poll() is None:
                proc.kill()


def start_train_and_wait_for_steps(tmp_path, tiny_model_dir, steps_done: int, **extra):
    config = write_config(tmp_path, tiny_model_dir, **{"steps": 500, **extra})
    train = subprocess.Popen([sys.executable, "-m", "rl.cli", "train", str(config)], cwd=REPO,
                             stdout=(tmp_path / "train.log").open("w"), stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while True:
        assert train.poll() is None, (tmp_path / "train.log").read_text()[-5000:]
        assert time.monotonic() < deadline, "the run made no progress"
        metrics = list((tmp_path / "runs").glob("*/metrics.jsonl"))
        if metrics and len(metrics[0].read_text().splitlines()) >= steps_done:
            return train, metrics[0].parent
        time.sleep(0.5)


def test_ctrl_c_leaves_a_loadable_checkpoint_and_no_processes(tmp_path, tiny_model_dir):
    import signal

    from transformers import AutoModelForCausalLM

    train, run_dir = start_train_and_wait_for_steps(tmp_path, tiny_model_dir, steps_done=1)
    train.send_signal(signal.SIGINT)
    train.wait(timeout=300)
    output = (tmp_path / "train.log").read_text()
    assert train.returncode == 130, output[-3000:]
    assert "interrupted" in output and "rl train --resume" in output, output[-3000:]
    assert_no_process_mentions(str(run_dir))
    assert re.search(r"stopped or still running: [1-9]\d* of 500 steps so far", (run_dir / "report.html").read_text())  # after a stop too
    (checkpoint,) = (run_dir / "checkpoints").iterdir()
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["step"] == state["policy_version"] >= 1
    assert (checkpoint / "deepspeed").is_dir() and not list((run_dir / "checkpoints").glob(".tmp-*"))
    exported = tmp_path / "exported"
    result = subprocess.run([sys.executable, "-m", "rl.cli", "export", str(run_dir), str(exported)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    model = AutoModelForCausalLM.from_pretrained(exported)
    saved = load_file(str(checkpoint / "policy" / "model.safetensors"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


def test_a_killed_worker_is_replaced_by_the_others_and_no_sample_is_trained_twice(tmp_path, tiny_model_dir):
    import signal

    import psutil

    train, run_dir = start_train_and_wait_for_steps(tmp_path, tiny_model_dir, steps_done=1, steps=4, num_workers=2)
    address = (run_dir / "learner_address").read_text().strip()
    victim = [p for p in psutil.process_iter(["cmdline"]) if address in " ".join(p.info["cmdline"] or []) and "local-1" in " ".join(p.info["cmdline"])]
    assert len(victim) == 1
    victim[0].send_signal(signal.SIGKILL)
    train.wait(timeout=300)
    output = (tmp_path / "train.log").read_text()
    assert train.returncode == 0, output[-3000:]
    assert "local-1" in output and "goes on with the others" in output
    # noticed by its missing heartbeats, or sooner when a send finds its connection gone
    assert "lost: no heartbeat" in output or "lost: its connection is gone" in output, output[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["workers/lost"] == 1 and records[-1]["workers/alive"] == 1
    audit = [json.loads(line) for line in (run_dir / "trained_samples.jsonl").read_text().splitlines()]
    assert [a["step"] for a in audit] == [1, 2, 3, 4]
    every_id = [sample for a in audit for sample in a["sample_ids"]]
    assert len(every_id) == len(set(every_id)) == 4 * 2 * 2, "a sample was trained twice, or one is missing"
    assert (run_dir / "final" / "model.safetensors").is_file()
    assert_no_process_mentions(str(run_dir))


def test_a_run_whose_workers_are_all_gone_waits_then_checkpoints_and_exits(tmp_path, tiny_model_dir):
    import signal

    import psutil

    train, run_dir = start_train_and_wait_for_steps(tmp_path, tiny_model_dir, steps_done=1)
    address = (run_dir / "learner_address").read_text().strip()
    (worker,) = [p for p in psutil.process_iter(["cmdline"]) if address in " ".join(p.info["cmdline"] or [])]
    worker.send_signal(signal.SIGKILL)
    train.wait(timeout=300)
    output = (tmp_path / "train.log").read_text()
    assert train.returncode == 3, output[-3000:]
    assert "waiting up to 5 s for one to join" in output
    assert "none joined within 5 s" in output and "rl train --resume" in output
    assert list((run_dir / "checkpoints").glob("step-*/trainer_state.json"))
    assert_no_process_mentions(str(run_dir))


def test_remote_workers_exit_on_their_own_when_the_learner_dies(tmp_path, tiny_model_dir):
    import signal

    import psutil

    train, run_dir = start_train_and_wait_for_steps(tmp_path, tiny_model_dir, steps_done=1)
    address = (run_dir / "learner_address").read_text().strip()
    joiner = subprocess.Popen([sys.executable, "-m", "rl.cli", "rollout", "--connect", address, "--name", "remote"], cwd=REPO,
                              stdout=(tmp_path / "joiner.log").open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "joined (remote from " not in (tmp_path / "train.log").read_text():
            assert time.monotonic() < deadline, "the remote worker never joined"
            time.sleep(0.5)
        learners = [p for p in psutil.process_iter(["cmdline"]) if "learner.main" in " ".join(p.info["cmdline"] or [])
                    and str(run_dir) in " ".join(p.info["cmdline"])]
        assert len(learners) == 1
        learners[0].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        assert joiner.wait(timeout=60) == 75, (tmp_path / "joiner.log").read_text()[-3000:]
        assert time.monotonic() - killed < 30  # transport.learner_timeout_s is 5
        assert "no connection to the learner" in (tmp_path / "joiner.log").read_text()
        train.wait(timeout=60)
    finally:
        for proc in (joiner, train):
            if proc.poll() is None:
                proc.kill()
    assert_no_process_mentions(str(run_dir))


def test_resume_sees_the_same_tasks_and_ends_with_the_same_weights(tmp_path, tiny_model_dir):
    def train(folder, *args, **extra):
        folder.mkdir()
        config = write_config(folder, tiny_model_dir, no_eval=True, **extra)
        command = [sys.executable, "-m", "rl.cli", "train", *(args or (str(config),))]
        result = subprocess.run(command, cwd=REPO, timeout=600, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return run_dir_of(folder)

    # the UCB curriculum: its windows and counts must come back too, or step 3 draws other distributions
    straight = train(tmp_path / "straight", steps=4, curriculum="ucb")
    halves = train(tmp_path / "halves", steps=2, checkpoint_every=2, curriculum="ucb")
    resumed = subprocess.run([sys.executable, "-m", "rl.cli", "train", "--resume", str(halves), "train.steps=4"], cwd=REPO,
                             timeout=600, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout

    audit = lambda run: [json.loads(line) for line in (run / "trained_samples.jsonl").read_text().splitlines()]
    assert [a["task_ids"] for a in audit(straight)] == [a["task_ids"] for a in audit(halves)], "different tasks or order"
    assert [a["step"] for a in audit(halves)] == [1, 2, 3, 4]
    metrics = lambda run: [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics(halves)] == [1, 2, 3, 4]
    for a, b in zip(metrics(straight), metrics(halves)):
        assert a["rollout/reward_mean"] == pytest.approx(b["rollout/reward_mean"], abs=1e-6)
        for name in ("add_1d", "add_2d"):
            assert a[f"curriculum/{name}/probability"] == pytest.approx(b[f"curriculum/{name}/probability"], abs=1e-9)
            assert a[f"curriculum/{name}/count"] == b[f"curriculum/{name}/count"]
    assert (halves / "curriculum.png").is_file()
    completions = lambda run: [(r["step"], r["task_id"], r["completion"]) for r in
                               map(json.loads, (run / "completions.jsonl").read_text().splitlines())]
    assert [c[0] for c in completions(halves)] == [s for s in (1, 2, 3, 4) for _ in range(4)]  # every step's samples once
    assert completions(halves) == completions(straight)
    first = load_file(str(straight / "final" / "model.safetensors"))
    second = load_file(str(halves / "final" / "model.safetensors"))
    for name, tensor in first.items():
        torch.testing.assert_close(second[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
