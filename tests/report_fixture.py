"""A run folder as `rl train` writes it, made up: metrics (with the diagnostics of newer runs),
completions (model output that tries HTML), held-out results and a torn last line."""

from __future__ import annotations

import json
from pathlib import Path

DISTRIBUTIONS = ("add_1d", "add_2d")
HOSTILE = "</pre><script>document.title='pwned'</script><img src=x onerror=alert(1)>"


def metrics_line(step: int) -> dict:
    record = {"step": step, "time": 1_700_000_000.0 + step, "policy_version": step,
              "rollout/reward_mean": 0.1 * step, "rollout/accuracy": 0.05 * step, "rollout/response_len_mean": 40.0 - step,
              "rollout/response_len_max": 64.0, "rollout/response_len_correct": 30.0, "rollout/response_len_wrong": 50.0,
              "train/kl": 0.001 * step, "train/approx_kl": 0.002 * step, "train/entropy": 1.5 - 0.05 * step,
              "time/step_seconds": 10.0 + step % 3, "time/rollout_wait_seconds": 6.0, "time/forward_backward_seconds": 3.0,
              "groups/zero_spread_frac": 0.25, "advantage/min": -1.2, "advantage/mean": 0.0, "advantage/max": 1.3,
              "memory/learner_peak_rss_gib": 2.5, "memory/worker0_peak_rss_gib": 1.9}
    for i, name in enumerate(DISTRIBUTIONS):
        record[f"curriculum/{name}/probability"] = 0.5 + (0.02 * step if i else -0.02 * step)
    if step % 2 == 0:
        record.update({f"eval/{name}/accuracy": 0.1 * step for name in DISTRIBUTIONS})
    return record


def completion_rows(step: int, groups: int = 3, samples: int = 2) -> list[dict]:
    rows = []
    for group in range(groups):
        for sample in range(samples):
            reward = group + 0.1 * sample
            rows.append({"step": step, "group": group, "distribution": DISTRIBUTIONS[group % 2], "task_id": f"t{step}-{group}",
                         "prompt": f"What is {step}+{group}? <b>bold?</b>", "completion": f"step {step} group {group} sample {sample} {HOSTILE}",
                         "reward": reward, "reward_components": {"boxed_answer": float(group > 0), "format": 0.1 * sample},
                         "advantage": sample - 0.5, "correct": group > 0, "length": 12 + sample, "finish_reason": "stop",
                         "policy_version": step - 1, "worker": sample % 2})
    return rows


def write_run(run_dir: Path, steps: int = 6, finished: bool = True, completions: bool = True, torn: bool = True) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(f"model: tiny\ntrain:\n  steps: {steps + (0 if finished else 4)}\nrun:\n  name: '<fixture>'\n")
    lines = [json.dumps(metrics_line(step)) for step in range(1, steps + 1)]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n" + ('{"step": 99, "rollout/rew' if torn else ""))
    if completions:
        rows = [row for step in range(1, steps + 1) for row in completion_rows(step)]
        (run_dir / "completions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + ('{"step": 7, "gro' if torn else ""))
    before = {"k": 1, "distributions": {name: {"accuracy": 0.0} for name in (*DISTRIBUTIONS, "overall")}}
    (run_dir / "eval_before.json").write_text(json.dumps(before))
    if finished:
        after = {"k": 1, "distributions": {name: {"accuracy": 0.9} for name in (*DISTRIBUTIONS, "overall")}}
        (run_dir / "eval_after.json").write_text(json.dumps(after))
        (run_dir / "final").mkdir()
    return run_dir
