"""A user reward function, loaded by path in the end-to-end test (as users name theirs in configs)."""


def shorter_is_better(completion: str, task) -> float:
    """Rewards short completions: gives a random model reward variance, so GRPO has a gradient."""
    return -len(completion) / 100.0


def varies_on_add_2d_only(completion: str, task) -> float:
    """Every add_1d group gets equal rewards (no signal): dynamic sampling must drop those groups."""
    return -len(completion) / 100.0 if task.distribution == "add_2d" else 0.0


def token_share(completion: str, task, *, token_id: int, token_ids: list[int]) -> float:
    """The share of the completion's tokens that are `token_id`: a reward the tiny random model
    learns within a few steps (tests/test_e2e_learning.py)."""
    return token_ids.count(token_id) / max(1, len(token_ids))


def records_what_it_sees(completion: str, task, *, log_dir: str) -> float:
    """Writes the task's answer, metadata and reward set to LOG_DIR/seen-PID.jsonl (one file per reward process),
    so a test can check what reached the rewards; scores like shorter_is_better."""
    import json
    import os
    from pathlib import Path

    record = {"task_id": task.task_id, "answer": task.answer, "metadata": task.metadata, "reward_set": task.reward_set}
    with open(Path(log_dir) / f"seen-{os.getpid()}.jsonl", "a") as out:
        out.write(json.dumps(record) + "\n")
    return -len(completion) / 100.0
