"""Which distribution the next prompt comes from.

`UniformCurriculum` is the baseline every peer framework ships; the UCB curriculum (DUMP) plugs in
behind the same `choose` / `observe` interface.
"""

from __future__ import annotations

import random
from typing import Protocol


class Curriculum(Protocol):
    def choose(self, rng: random.Random) -> str: ...

    def observe(self, distribution: str, abs_advantages: list[float]) -> None: ...

    def weights(self) -> dict[str, float]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class UniformCurriculum:
    def __init__(self, distributions: list[str]):
        self.distributions = list(distributions)

    def choose(self, rng: random.Random) -> str:
        return rng.choice(self.distributions)

    def observe(self, distribution: str, abs_advantages: list[float]) -> None:
        """Uniform sampling ignores feedback."""

    def weights(self) -> dict[str, float]:
        return {name: 1.0 / len(self.distributions) for name in self.distributions}

    def state_dict(self) -> dict:
        return {"kind": "uniform"}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore: uniform sampling has no memory."""
