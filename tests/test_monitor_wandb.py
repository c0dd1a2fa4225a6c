"""W&B after a resume: the resumed start's new W&B run holds exactly what metrics.jsonl holds.

Real wandb (offline), read back with wandb's own inspector; no model, so this runs in seconds.
"""

import json
import math

from rl.config import Config
from rl.monitor import Monitor, truncate_after
from tests.wandb_history import differences, metrics_rows, offline_run_folder, wandb_history, wandb_run_record


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
