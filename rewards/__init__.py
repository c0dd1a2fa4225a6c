"""Reward functions: built-ins, the registry, and the process pool that runs them safely."""

from rewards.registry import reward

__all__ = ["reward"]
