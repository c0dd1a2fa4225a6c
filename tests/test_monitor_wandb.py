"""W&B after a resume: the resumed start's new W&B run holds exactly what metrics.jsonl holds.

Real wandb (offline), read back with wandb's own inspector; no model, so this runs in seconds.
"""

import json
import math

from rl.config import Config
from rl.monitor import Monitor, truncate_after
from tests.wandb_history import (
    differences,
    metrics_rows,
    offline_run_folder,
    wandb_history,
    wandb_run_record,
    wandb_tables,
)


def offline_config() -> Config:
    return Config(logging={"wandb": "offline", "progress": False})


def test_a_resumed_monitor_replays_the_steps_up_to_the_checkpoint_into_a_new_linked_run(tmp_path):
    run_dir = tmp_path / "run-20261201-000000"
    run_dir.mkdir()
    first = Monitor(offline_config(), run_dir, total_steps=6)
    for step in range(1, 6):  # the lost run: steps 4 and 5 come again after the resume, with other values
        first.log(step, {"rollout/reward_mean": step / 10, "rollout/accuracy": math.nan if step == 2 else 0.5})
    first_id = first.wandb_id
    first.close()

    truncate_after(run_dir / "metrics.jsonl", 3)  # what the learner does on resume from the step-3 checkpoint
    second = Monitor(offline_config(), run_dir, total_steps=6, initial_step=3, resumed_from=first_id)
    for step in range(4, 7):
        second.log(step, {"rollout/reward_mean": -step / 10, "rollout/accuracy": 1.0})
    second_id = second.wandb_id
    second.close()

    expected = metrics_rows(run_dir / "metrics.jsonl")
    assert [r["step"] for r in expected] == [1, 2, 3, 4, 5, 6]
    assert expected[4]["rollout/reward_mean"] == -0.5  # the resumed run's value, not the lost one's
    assert second_id != first_id
    folder = offline_run_folder(run_dir / "wandb", second_id)
    assert (run_dir / "wandb" / "latest-run").resolve() == folder.resolve()  # the run the README names
    assert differences(expected, wandb_history(folder)) == []
    run = wandb_run_record(folder)
    config = run["config"]["update"]
    assert config["resumed_from"] == first_id and config["resumed_at_step"] == 3
    assert run["display_name"] == run["run_group"] == run_dir.name


def test_truncate_after_drops_later_steps_and_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "x": s}) for s in (1, 2, 3, 4)] + ['{"step": 5, "x"']  # killed mid-write
    path.write_text("\n".join(lines))
    truncate_after(path, 3)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
    truncate_after(tmp_path / "absent.jsonl", 3)  # nothing to cut: no error


def completion_rows_of(step: int, groups: int = 3, size: int = 2) -> list[dict]:
    return [{"step": step, "group": g, "distribution": "add", "task_id": f"t{g}", "sample_id": f"s{step}-{g}-{i}",
             "prompt": f"What is {g}+{g}?", "completion": f"answer {i}", "reward": float(g * i), "reward_components": {"boxed": float(g * i)},
             "advantage": float(i) - 0.5, "correct": bool(i), "length": 3 + i, "finish_reason": "stop", "policy_version": step - 1,
             "worker": 0, "trained": True} for g in range(groups) for i in range(size)]


def test_completions_go_to_the_jsonl_and_whole_groups_to_a_wandb_table_also_after_a_resume(tmp_path):
    run_dir = tmp_path / "run-20261201-000001"
    run_dir.mkdir()
    config = Config(logging={"wandb": "offline", "progress": False, "completions_per_step": 5})  # room for 2 groups of 2
    first = Monitor(config, run_dir, total_steps=4)
    for step in range(1, 4):
        first.log_completions(step, completion_rows_of(step))
        first.log(step, {"rollout/reward_mean": step / 10})
    first_id = first.wandb_id
    first.close()
    for name in ("metrics.jsonl", "completions.jsonl"):
        truncate_after(run_dir / name, 2)
    second = Monitor(config, run_dir, total_steps=4, initial_step=2, resumed_from=first_id)
    for step in (3, 4):
        second.log_completions(step, completion_rows_of(step))
        second.log(step, {"rollout/reward_mean": step / 10})
    second_id = second.wandb_id
    second.close()

    logged = [json.loads(line) for line in (run_dir / "completions.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1] * 6 + [2] * 6 + [3] * 6 + [4] * 6  # step 3 once: the resumed run's
    folder = offline_run_folder(run_dir / "wandb", second_id)
    tables = wandb_tables(folder, "completions")
    assert sorted(tables) == [1, 2, 3, 4]  # the replayed steps keep their tables
    for step, table in tables.items():
        assert table["columns"] == ["step", "distribution", "prompt", "completion", "reward", "reward/boxed", "advantage",
                                    "correct", "length", "finish_reason", "policy_version", "worker"]
        # 5 rows allowed: two whole groups, the widest spread (2: rewards 0, 2) and the narrowest (0: rewards 0, 0)
        assert [(row[0], row[2]) for row in table["data"]] == [(step, "What is 0+0?")] * 2 + [(step, "What is 2+2?")] * 2
    assert differences(metrics_rows(run_dir / "metrics.jsonl"), wandb_history(folder)) == []  # the table is no metric
