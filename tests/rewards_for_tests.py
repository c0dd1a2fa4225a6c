"""A user reward function, loaded by path in the end-to-end test (as users name theirs in configs)."""


def shorter_is_better(completion: str, task) -> float:
    """Rewards short completions: gives a random model reward variance, so GRPO has a gradient."""
    return -len(completion) / 100.0
