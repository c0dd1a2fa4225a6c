"""The completions log: one row per sample with its group's rows consecutive, the W&B table's choice of
whole groups under its row limit, and cutting the log back on resume."""

import json

from learner.collect import StepBatch, question_of
from learner.completions import completion_rows, completions_due
from rl.completions_table import table_columns, table_data, table_rows
from rl.config import Config, completions_table_rows
from rl.monitor import truncate_after
from rl.wire import ChatMessage, Task
from tests.test_diagnostics import sample

ROW_KEYS = {"step", "group", "distribution", "task_id", "sample_id", "prompt", "completion", "reward", "reward_components",
            "advantage", "correct", "length", "finish_reason", "policy_version", "worker", "trained"}


def interleaved_batch() -> StepBatch:
    """Two groups whose samples arrive interleaved (as backup copies and dynamic-sampling rounds can), one not trained."""
    batch = StepBatch({})
    a = [sample("w0-r0-t0", i, float(i), "add", correct=i == 1) for i in range(2)]
    b = [sample("w1-r1-t0", i, 1.0, "mul", worker=1) for i in range(2)]
    batch.generated = [a[0], b[0], a[1], b[1]]
    batch.trained = a
    batch.questions = {"w0-r0-t0": "What is 1+1?", "w1-r1-t0": "What is 2*3?"}
    batch.advantages = {"w0-r0-t0-s0": -0.7, "w0-r0-t0-s1": 0.7, "w1-r1-t0-s0": 0.0, "w1-r1-t0-s1": 0.0}
    return batch


def test_one_row_per_sample_with_each_groups_rows_consecutive():
    rows = completion_rows(5, interleaved_batch())
    assert [(r["group"], r["sample_id"]) for r in rows] == [(0, "w0-r0-t0-s0"), (0, "w0-r0-t0-s1"),
                                                            (1, "w1-r1-t0-s0"), (1, "w1-r1-t0-s1")]
    assert all(set(r) == ROW_KEYS and r["step"] == 5 for r in rows)
    first = rows[1]
    assert (first["prompt"], first["completion"], first["advantage"], first["correct"], first["trained"]) == \
        ("What is 1+1?", "answer 1", 0.7, True, True)
    assert rows[2]["worker"] == 1 and rows[2]["trained"] is False and rows[2]["reward_components"] == {"r": 1.0}
    json.dumps(rows)  # every value is JSON


def test_the_question_is_the_last_user_message_not_the_system_prompt():
    task = Task(task_id="t", distribution="d", answer="2", messages=[
        ChatMessage(role="system", content="Think step by step."), ChatMessage(role="user", content="First?"),
        ChatMessage(role="assistant", content="..."), ChatMessage(role="user", content="What is 1+1?")])
    assert question_of(task) == "What is 1+1?"


def rows_of(spreads: list[tuple[float, ...]]) -> list[dict]:
    return [{"group": g, "reward": r, "reward_components": {}} for g, rewards in enumerate(spreads) for r in rewards]


def test_the_table_keeps_whole_groups_widest_and_narrowest_spread_first_within_the_limit():
    rows = rows_of([(0.0, 0.1), (0.0, 2.0), (1.0, 1.0), (0.0, 1.0), (0.5, 0.5, 0.5)])
    # spreads 0.1, 2.0, 0, 1.0, 0: widest (1), narrowest (2), next widest (3), next narrowest (4, 3 rows) ...
    assert [r["group"] for r in table_rows(rows, 6)] == [1, 1, 2, 2, 3, 3]
    assert [r["group"] for r in table_rows(rows, 7)] == [1, 1, 2, 2, 3, 3]  # group 4's 3 rows no longer fit: whole only
    assert [r["group"] for r in table_rows(rows, 9)] == [1, 1, 2, 2, 3, 3, 4, 4, 4]
    assert len(table_rows(rows, 100)) == len(rows)
    assert table_rows(rows, 1) == [] and table_rows(rows, 0) == []


def test_table_columns_name_every_reward_component_and_leave_missing_ones_empty():
    rows = completion_rows(3, interleaved_batch())
    rows[2]["reward_components"] = {"format": 0.5}  # another source's reward set
    columns = table_columns(rows)
    assert columns == ["step", "distribution", "prompt", "completion", "reward", "reward/format", "reward/r", "advantage",
                       "correct", "length", "finish_reason", "policy_version", "worker"]
    data = table_data(rows, columns)
    assert data[0][5:7] == [None, 0.0] and data[2][5:7] == [0.5, None]


def test_which_steps_are_logged_and_the_default_table_size():
    assert [s for s in range(1, 7) if completions_due(s, 2)] == [2, 4, 6]
    assert not any(completions_due(s, 0) for s in range(1, 7))
    assert completions_table_rows(Config()) == 16
    assert completions_table_rows(Config(rollout={"samples_per_prompt": 32})) == 32  # one whole group at least
    assert completions_table_rows(Config(logging={"completions_per_step": 0})) == 0


def test_a_resume_cuts_the_completions_of_steps_after_the_checkpoint(tmp_path):
    path = tmp_path / "completions.jsonl"
    rows = [json.dumps({"step": s, "group": g}) for s in (1, 2, 3) for g in (0, 0, 1, 1)]
    path.write_text("\n".join(rows) + '\n{"step": 3, "gro')  # the learner was killed mid-write
    truncate_after(path, 2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1] * 4 + [2] * 4
