"""Reward scoring throughput: 2,000 math completions through the process pool and inline.

value:     RewardPool (2 processes, per-call timeout) scoring `math_answer` (math-verify).
reference: the same component called inline in this process, one completion after another.
The pool pays for safety (a hung or crashing verifier cannot stall or kill the worker) with
inter-process messages; the ratio says what that costs.

    python bench/rewards.py [--count 2000] [--processes 2]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from rewards.pool import RewardPool  # noqa: E402
from rewards.registry import build_reward  # noqa: E402
from rl.wire import Task  # noqa: E402

FORMS = [
    ("{n}", "So the answer is \\boxed{{{n}}}."),
    ("\\frac{{{n}}}{{7}}", "We get \\boxed{{\\frac{{{n}}}{{7}}}}"),
    ("{n}.5", "Hence $\\boxed{{{n}.5}}$"),
    ("\\sqrt{{{n}}}", "The length is \\boxed{{\\sqrt{{{n}}}}}."),
    ("{n}", "I think it is {n} but I am not sure."),  # missing
    ("{n}", "Therefore \\boxed{{{m}}}"),  # wrong
]


def make_completions(count: int, seed: int = 0) -> tuple[list[str], list[Task]]:
    rng = random.Random(seed)
    completions, tasks = [], []
    for i in range(count):
        reference, completion = rng.choice(FORMS)
        n, m = rng.randint(2, 999), rng.randint(2, 999)
        completions.append(completion.format(n=n, m=m))
        tasks.append(Task(task_id=f"t{i}", distribution="bench", messages=[{"role": "user", "content": "q"}],
                          answer=reference.format(n=n)))
    return completions, tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    specs = [{"name": "math_answer", "weight": 1.0}]
    completions, tasks = make_completions(args.count)

    inline = build_reward(specs)
    inline("\\boxed{1}", tasks[0])  # warm-up: imports and sympy caches
    start = time.perf_counter()
    inline_scores = [inline(c, t)[0] for c, t in zip(completions, tasks)]
    inline_rate = args.count / (time.perf_counter() - start)

    pool = RewardPool(specs, num_processes=args.processes, timeout_s=5.0)
    task_dicts = [t.model_dump() for t in tasks]
    pool.score(completions[:8], task_dicts[:8], [{}] * 8)  # warm-up: children started and ready
    start = time.perf_counter()
    pooled = pool.score(completions, task_dicts, [{}] * args.count)
    pool_rate = args.count / (time.perf_counter() - start)
    pool.close()

    assert [s.total for s in pooled] == inline_scores, "the pool and inline scoring disagree"
    print(f"{args.count} completions, {sum(inline_scores):.0f} correct; errors in the pool: {dict(pool.errors) or 'none'}")
    print(f"pool ({args.processes} processes): {pool_rate:.0f} completions/s   inline: {inline_rate:.0f} completions/s")
    print(json.dumps({"metric": "reward_completions_per_s", "value": round(pool_rate, 4), "reference": round(inline_rate, 4),
                      "ratio": round(pool_rate / inline_rate, 3), "unit": "completions/s"}))


if __name__ == "__main__":
    main()
