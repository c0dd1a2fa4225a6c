"""Which distribution the next prompt comes from.

Three curricula share one interface (`Curriculum`): `choose` a distribution for the next prompt with the
caller's `random.Random`, `observe` the absolute advantages of a distribution's fresh samples, report
`weights` (the current sampling probabilities) and `stats`, and checkpoint with `state_dict` /
`load_state_dict` (JSON-serialisable; the caller checkpoints its own random state).

- `UniformCurriculum`: every distribution equally likely, the baseline every peer framework ships.
- `StaticCurriculum`: fixed, configured mixing weights.
- `UCBCurriculum`: DUMP ("Automated Distribution-Level Curriculum Learning for RL-based LLM
  Post-training"). The mean |advantage| of a distribution's recent samples measures how much the policy
  can still learn from it (a distribution the policy always or never solves has all-zero advantages).
  Each distribution j is scored

      score_j = mean(|A| over its last `window` samples) + c * sqrt(2 * ln(N + 1) / (n_j + 1))

  with n_j the number of samples it has ever contributed and N = sum_j n_j, and prompts are drawn from
  softmax(score / temperature). The bonus keeps every distribution sampled now and then, so one whose
  signal comes back (the policy forgot it, or became able to learn it) is noticed.

  What the |advantage| is, is the learner's to compute (learner/curriculum_signal.py): GRPO's
  group-normalised advantage of the total reward (`signal="reward"`, DUMP) or of the correctness
  verdict alone (`signal="correctness"`), whatever the training estimator. The curriculum records
  its `signal` so a checkpoint cannot be resumed with another.

`make_curriculum(spec, distributions)` builds one from the config value: "uniform",
{"ucb": {...parameters}} or {"static": {"weights": {...}}}.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

SIGNALS = ("reward", "correctness")  # what the learner computes the |advantage| from (learner/curriculum_signal.py)


class Curriculum(Protocol):
    def choose(self, rng: random.Random) -> str: ...

    def observe(self, distribution: str, abs_advantages: list[float]) -> None: ...

    def weights(self) -> dict[str, float]: ...

    def stats(self) -> dict[str, dict[str, float]]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


# ---------------------------------------------------------------- the math, as pure functions


def window_mean(values: Iterable[float]) -> float:
    """Mean of the values; 0.0 for none (a distribution without samples has no learning signal yet)."""
    total, count = 0.0, 0
    for value in values:
        total += value
        count += 1
    return total / count if count else 0.0


def ucb_scores(window_means: Sequence[float], counts: Sequence[int], c: float) -> list[float]:
    """score_j = window_means[j] + c * sqrt(2 * ln(N + 1) / (counts[j] + 1)), N = sum(counts)."""
    if len(window_means) != len(counts):
        raise ValueError(f"{len(window_means)} window means but {len(counts)} counts")
    if any(n < 0 for n in counts):
        raise ValueError(f"counts must be >= 0, got {list(counts)}")
    if not (c >= 0 and math.isfinite(c)):
        raise ValueError(f"c must be a finite number >= 0, got {c}")
    log_total = math.log(sum(counts) + 1)
    return [mean + c * math.sqrt(2.0 * log_total / (n + 1)) for mean, n in zip(window_means, counts)]


def softmax(scores: Sequence[float], temperature: float) -> list[float]:
    """exp(score / temperature), normalised; the max is subtracted first so no exponent overflows."""
    if not scores:
        raise ValueError("softmax of no scores")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if not all(math.isfinite(s) for s in scores):
        raise ValueError(f"scores must be finite, got {list(scores)}")
    top = max(scores)
    exps = [math.exp((s - top) / temperature) for s in scores]  # the largest is exp(0) = 1, so the sum is >= 1
    total = sum(exps)
    return [e / total for e in exps]


def draw(names: Sequence[str], probabilities: Sequence[float], rng: random.Random) -> str:
    """One name, with the given probabilities, from exactly one `rng.random()` call (deterministic given the rng state)."""
    threshold = rng.random() * sum(probabilities)
    cumulative = 0.0
    for name, p in zip(names, probabilities):
        cumulative += p
        if threshold < cumulative:
            return name
    # rounding put the threshold at the very top: the last name with any probability
    return next(name for name, p in zip(reversed(names), reversed(probabilities)) if p > 0)


# ---------------------------------------------------------------- shared checks


def _check_distributions(distributions: Iterable[str]) -> list[str]:
    names = list(distributions)
    if not names:
        raise ValueError("a curriculum needs at least one distribution")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"distribution names repeat: {duplicates}")
    return names


def _normalised_weights(weights: Mapping[str, float], distributions: list[str], what: str, positive: bool) -> dict[str, float]:
    """Weights for exactly the given distributions, scaled to sum to 1; a ValueError names any problem.

    Every distribution must be listed (give 0 to leave one out of a static mix), so a typo or a
    forgotten distribution cannot silently change the mix.
    """
    if not isinstance(weights, Mapping):
        raise ValueError(f"{what} must be a mapping of distribution name -> weight, got {weights!r}")
    unknown = sorted(set(weights) - set(distributions))
    if unknown:
        raise ValueError(f"{what} name unknown distributions {unknown}; the distributions are {distributions}")
    missing = [n for n in distributions if n not in weights]
    if missing:
        raise ValueError(f"{what} must give every distribution a weight; missing {missing}")
    values = {}
    for name in distributions:
        value = weights[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{what}: the weight of {name!r} must be a finite number, got {value!r}")
        if value < 0 or (positive and value == 0):
            bound = "> 0" if positive else ">= 0"
            raise ValueError(f"{what}: the weight of {name!r} must be {bound}, got {value}")
        values[name] = float(value)
    total = sum(values.values())
    if not total > 0:
        raise ValueError(f"{what} must have a positive total, got {total}")
    return {name: value / total for name, value in values.items()}


def _check_values(distribution: str, abs_advantages: Iterable[float]) -> list[float]:
    values = [float(v) for v in abs_advantages]
    bad = [v for v in values if not (math.isfinite(v) and v >= 0)]
    if bad:
        raise ValueError(f"absolute advantages of {distribution!r} must be finite and >= 0, got {bad[:5]}")
    return values


def _check_kind(state: Mapping[str, Any], kind: str) -> None:
    found = state.get("kind")
    if found != kind:
        raise ValueError(f"the checkpoint holds a {found!r} curriculum, this run uses {kind!r}; "
                         "resume with the run's own curriculum setting")


def _load_counts(state: Mapping[str, Any], distributions: list[str]) -> dict[str, int]:
    """Sample counts from a checkpoint (absent in old uniform checkpoints: zeros)."""
    counts = state.get("counts")
    if counts is None:
        return {name: 0 for name in distributions}
    if sorted(counts) != sorted(distributions):
        raise ValueError(f"the checkpoint's curriculum has distributions {sorted(counts)}, this run has "
                         f"{sorted(distributions)}; resume with the run's own env settings")
    return {name: int(counts[name]) for name in distributions}


# ---------------------------------------------------------------- the curricula


class UniformCurriculum:
    """Every distribution equally likely; counts samples for `stats` only."""

    kind = "uniform"

    def __init__(self, distributions: list[str]):
        self.distributions = _check_distributions(distributions)
        self.counts = {name: 0 for name in self.distributions}

    def choose(self, rng: random.Random) -> str:
        return rng.choice(self.distributions)

    def observe(self, distribution: str, abs_advantages: list[float]) -> None:
        """Uniform sampling ignores feedback; the samples are only counted."""
        if distribution not in self.counts:
            raise ValueError(f"unknown distribution {distribution!r}; the distributions are {self.distributions}")
        self.counts[distribution] += len(abs_advantages)

    def weights(self) -> dict[str, float]:
        return {name: 1.0 / len(self.distributions) for name in self.distributions}

    def stats(self) -> dict[str, dict[str, float]]:
        probabilities = self.weights()
        return {name: {"probability": probabilities[name], "count": self.counts[name]} for name in self.distributions}

    def state_dict(self) -> dict:
        return {"kind": self.kind, "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        _check_kind(state, self.kind)
        self.counts = _load_counts(state, self.distributions)


class StaticCurriculum:
    """Fixed mixing weights (normalised to sum to 1); a distribution with weight 0 is never drawn."""

    kind = "static"

    def __init__(self, distributions: list[str], weights: Mapping[str, float]):
        self.distributions = _check_distributions(distributions)
        self.probabilities = _normalised_weights(weights, self.distributions, "static curriculum weights", positive=False)
        self.counts = {name: 0 for name in self.distributions}

    def choose(self, rng: random.Random) -> str:
        return draw(self.distributions, [self.probabilities[n] for n in self.distributions], rng)

    def observe(self, distribution: str, abs_advantages: list[float]) -> None:
        """Fixed weights ignore feedback; the samples are only counted."""
        if distribution not in self.counts:
            raise ValueError(f"unknown distribution {distribution!r}; the distributions are {self.distributions}")
        self.counts[distribution] += len(abs_advantages)

    def weights(self) -> dict[str, float]:
        return dict(self.probabilities)

    def stats(self) -> dict[str, dict[str, float]]:
        return {name: {"probability": self.probabilities[name], "count": self.counts[name]} for name in self.distributions}

    def state_dict(self) -> dict:
        return {"kind": self.kind, "weights": dict(self.probabilities), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        _check_kind(state, self.kind)
        self.counts = _load_counts(state, self.distributions)


class UCBCurriculum:
    """DUMP: softmax(UCB score / temperature) over distributions, scored by recent mean |advantage|.

    `initial_weights` (optional, every distribution with a weight > 0) are the sampling probabilities
    until every distribution has contributed at least one sample. Until then some distributions have no
    window at all: their mean |A| is a placeholder 0 and their bonus is the largest possible, so the UCB
    ranking says nothing yet about where the signal is and would simply send the next prompts to the
    unobserved distributions. A configured prior is a better guide for that warm-up; weights > 0
    guarantee each distribution is eventually drawn, so the warm-up always ends. Afterwards the scores
    alone decide (the evidence has arrived; a persistent prior would bias the curriculum forever).
    Without `initial_weights` the UCB probabilities are used from the start (all scores are equal at
    first, so the first draws are uniform).
    """

    kind = "ucb"

    def __init__(
        self,
        distributions: list[str],
        window: int = 300,
        c: float = 1.0,
        temperature: float = 0.1,
        initial_weights: Mapping[str, float] | None = None,
        signal: str = "reward",
    ):
        self.distributions = _check_distributions(distributions)
        if signal not in SIGNALS:
            raise ValueError(f"ucb signal must be one of {list(SIGNALS)}, got {signal!r}")
        self.signal = signal
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"ucb window must be an integer >= 1, got {window!r}")
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not (math.isfinite(c) and c >= 0):
            raise ValueError(f"ucb c must be a finite number >= 0, got {c!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            math.isfinite(temperature) and temperature > 0
        ):
            raise ValueError(f"ucb temperature must be a finite number > 0, got {temperature!r}")
        self.window = window
        self.c = float(c)
        self.temperature = float(temperature)
        self.initial_weights = (
            None if initial_weights is None
            else _normalised_weights(initial_weights, self.distributions, "ucb initial_weights", positive=True)
        )
        self.windows: dict[str, deque[float]] = {name: deque(maxlen=window) for name in self.distributions}
        self.counts = {name: 0 for name in self.distributions}
        self._cache: tuple[list[float], list[float]] | None = None  # (scores, probabilities) until the next observe

    # ---- feedback

    def observe(self, distribution: str, abs_advantages: list[float]) -> None:
        if distribution not in self.windows:
            raise ValueError(f"unknown distribution {distribution!r}; the distributions are {self.distributions}")
        values = _check_values(distribution, abs_advantages)
        self.windows[distribution].extend(values)
        self.counts[distribution] += len(values)
        self._cache = None

    # ---- the decision

    def warming_up(self) -> bool:
        """True while `initial_weights` are in force: some distribution has no sample yet."""
        return self.initial_weights is not None and any(n == 0 for n in self.counts.values())

    def _scores_and_probabilities(self) -> tuple[list[float], list[float]]:
        if self._cache is None:
            means = [window_mean(self.windows[n]) for n in self.distributions]
            scores = ucb_scores(means, [self.counts[n] for n in self.distributions], self.c)
            if self.warming_up():
                probabilities = [self.initial_weights[n] for n in self.distributions]
            else:
                probabilities = softmax(scores, self.temperature)
            self._cache = (scores, probabilities)
        return self._cache

    def weights(self) -> dict[str, float]:
        return dict(zip(self.distributions, self._scores_and_probabilities()[1]))

    def choose(self, rng: random.Random) -> str:
        return draw(self.distributions, self._scores_and_probabilities()[1], rng)

    def stats(self) -> dict[str, dict[str, float]]:
        scores, probabilities = self._scores_and_probabilities()
        return {
            name: {
                "probability": p,
                "mean_abs_advantage": window_mean(self.windows[name]),
                "count": self.counts[name],
                "score": score,
            }
            for name, score, p in zip(self.distributions, scores, probabilities)
        }

    # ---- checkpoints

    def parameters(self) -> dict[str, Any]:
        return {"window": self.window, "c": self.c, "temperature": self.temperature, "initial_weights": self.initial_weights,
                "signal": self.signal}

    def state_dict(self) -> dict:
        return {
            "kind": self.kind,
            "parameters": self.parameters(),
            "distributions": list(self.distributions),
            "windows": {name: list(self.windows[name]) for name in self.distributions},
            "counts": dict(self.counts),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore windows and counts; the distributions and parameters must be this run's own."""
        _check_kind(state, self.kind)
        if list(state.get("distributions", [])) != self.distributions:
            raise ValueError(f"the checkpoint's curriculum has distributions {state.get('distributions')}, this run has "
                             f"{self.distributions}; resume with the run's own env settings")
        saved = {"signal": "reward", **state.get("parameters", {})}  # checkpoints from before `signal` used the reward
        changed = {k: (saved.get(k), v) for k, v in self.parameters().items() if saved.get(k) != v}
        if changed:
            detail = ", ".join(f"{k}: checkpoint {old!r}, config {new!r}" for k, (old, new) in changed.items())
            raise ValueError(f"the ucb curriculum's parameters changed since the checkpoint ({detail}); "
                             "resume with the run's own curriculum settings")
        windows, counts = state["windows"], state["counts"]
        restored_windows, restored_counts = {}, {}
        for name in self.distributions:
            values = _check_values(name, windows[name])
            count = int(counts[name])
            if len(values) > self.window or count < len(values):
                raise ValueError(f"the checkpoint's curriculum state for {name!r} is inconsistent: "
                                 f"{len(values)} window values, window {self.window}, count {count}")
            restored_windows[name] = deque(values, maxlen=self.window)
            restored_counts[name] = count
        self.windows, self.counts = restored_windows, restored_counts
        self._cache = None


# ---------------------------------------------------------------- the factory


UCB_PARAMETERS = ("window", "c", "temperature", "initial_weights", "signal")


def make_curriculum(spec: str | Mapping[str, Any], distributions: list[str]) -> Curriculum:
    """Build a curriculum from its config value.

    "uniform" | "ucb" (the DUMP defaults) | {"ucb": {"window": 300, "c": 1.0, "temperature": 0.1,
    "initial_weights": {name: w}, "signal": "reward" | "correctness"}} (any subset) | {"static": {"weights": {name: w}}} | {"uniform": {}}.
    """
    if isinstance(spec, str):
        kind, params = spec, {}
    elif isinstance(spec, Mapping) and len(spec) == 1:
        ((kind, params),) = spec.items()
        params = {} if params is None else params
    else:
        raise ValueError(f"a curriculum is 'uniform', {{'ucb': {{...}}}} or {{'static': {{'weights': {{...}}}}}}; got {spec!r}")
    if not isinstance(params, Mapping):
        raise ValueError(f"the {kind!r} curriculum's settings must be a mapping, got {params!r}")
    params = dict(params)
    if kind == "uniform":
        _no_other_keys(kind, params, ())
        return UniformCurriculum(distributions)
    if kind == "ucb":
        _no_other_keys(kind, params, UCB_PARAMETERS)
        return UCBCurriculum(distributions, **params)
    if kind == "static":
        _no_other_keys(kind, params, ("weights",))
        if "weights" not in params:
            raise ValueError("the static curriculum needs `weights`: {distribution name: weight}")
        return StaticCurriculum(distributions, params["weights"])
    raise ValueError(f"unknown curriculum {kind!r}; choose 'uniform', 'ucb' or 'static'")


def _no_other_keys(kind: str, params: Mapping[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown} for the {kind!r} curriculum; allowed: {list(allowed)}")
