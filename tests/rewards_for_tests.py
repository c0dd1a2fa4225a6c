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
