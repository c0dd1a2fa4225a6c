"""Knights and Knaves generation: our solver-guided generator against naive generate-and-test.

Ours: draw a hidden assignment, give each person the best of a few statements consistent with it
(the one that rules out most of the surviving assignments, kept as a numpy array), retry when
more than one assignment survives. Reference, measured in the same run on the same sizes: the
textbook way, one random consistent statement per person, then a pure-Python brute force over
all 2^n assignments to test uniqueness, retried until unique. Both yield puzzles with exactly one
solution; the figure is seconds per puzzle, summed over the sizes, ours / reference.

    .venv/bin/python bench/task_generation.py [--per-size 100] [--max-people 10]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envs.knights_knaves import (
    MAX_PEOPLE,
    MIN_PEOPLE,
    _random_statement,
    evaluate,
    generate_puzzle,
)


def brute_force_count(n: int, statements: list[dict], stop_at: int = 2) -> int:
    count = 0
    for assignment in itertools.product((True, False), repeat=n):
        if all(evaluate(s, assignment) == assignment[i] for i, s in enumerate(statements)):
            count += 1
            if count >= stop_at:
                break
    return count


def naive_puzzle(n: int, rng: random.Random) -> tuple[list[dict], int]:
    """(statements, attempts) of the first uniquely solvable draw."""
    attempts = 0
    while True:
        attempts += 1
        solution = tuple(rng.random() < 0.5 for _ in range(n))
        statements = [_random_statement(n, solution, speaker, rng) for speaker in range(n)]
        if brute_force_count(n, statements) == 1:
            return statements, attempts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--per-size", type=int, default=50)
    parser.add_argument("--max-people", type=int, default=14, help="largest size the naive reference runs (it doubles per person)")
    args = parser.parse_args()

    ours_total = naive_total = 0.0
    print(f"{'people':>6} {'ours ms/puzzle':>15} {'naive ms/puzzle':>16} {'naive attempts':>15}")
    for n in range(MIN_PEOPLE, args.max_people + 1):
        rng = random.Random(n)
        start = time.perf_counter()
        for _ in range(args.per_size):
            generate_puzzle(n, rng)
        ours = (time.perf_counter() - start) / args.per_size
        rng = random.Random(n)
        start = time.perf_counter()
        attempts = sum(naive_puzzle(n, rng)[1] for _ in range(args.per_size))
        naive = (time.perf_counter() - start) / args.per_size
        ours_total, naive_total = ours_total + ours, naive_total + naive
        print(f"{n:>6} {1000 * ours:>15.2f} {1000 * naive:>16.2f} {attempts / args.per_size:>15.1f}", flush=True)
    for n in range(args.max_people + 1, MAX_PEOPLE + 1):  # ours alone, up to 14 people
        rng = random.Random(n)
        start = time.perf_counter()
        for _ in range(args.per_size):
            generate_puzzle(n, rng)
        print(f"{n:>6} {1000 * (time.perf_counter() - start) / args.per_size:>15.2f} {'-':>16} {'-':>15}", flush=True)

    print(json.dumps({
        "metric": f"kk_generation_seconds_per_puzzle_{MIN_PEOPLE}_to_{args.max_people}_people",
        "value": round(ours_total, 5), "reference": round(naive_total, 5),
        "ratio": round(ours_total / naive_total, 4), "unit": "s",
    }))


if __name__ == "__main__":
    main()
