"""The packed learner on a GPU: exactness against the padded per-sample path, then the learner benchmark.

Needs torch, transformers, DeepSpeed and this project; no vLLM. Run it on any machine with a GPU:

    python scripts/gpu_learner_check.py                    # CUDA, the default model, all shapes
    python scripts/gpu_learner_check.py --device cpu --model tests/tiny   # what tests/test_gpu_check.py runs

1. Exactness: for every algorithm case of tests/packing_exactness.py, the packed layout against one
   padded row per sample, in fp32 (logprobs within 5e-5, loss within 1e-5 relative, every gradient
   within 1e-4 relative per tensor). Prints one line per case and fails if any is out of tolerance.
2. Benchmark: bench/learner_step.py's packed-against-padded optimizer step on the chosen shapes.

The last line is the benchmark's JSON line (or, with --skip-bench, a JSON line of the worst gradient gap).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def check_exactness(model_dir: str, device: str, algorithms: list[str]) -> float:
    import torch

    from tests.packing_exactness import TOLERANCES, compare_layouts

    worst, failures = 0.0, []
    for algorithm in algorithms:
        gaps = compare_layouts(model_dir, algorithm, torch.device(device))
        bad = [name for name, tolerance in TOLERANCES.items() if gaps[name] > tolerance]
        worst = max(worst, gaps["grad_rel"])
        print(f"exactness {algorithm:<30} " + " ".join(f"{k}={v:.2g}" for k, v in gaps.items()) + ("  FAIL " + ",".join(bad) if bad else "  ok"),
              flush=True)
        if bad:
            failures.append(algorithm)
    if failures:
        raise SystemExit(f"packed and padded differ beyond tolerance for: {', '.join(failures)}")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a model folder or alias (the benchmark's model)")
    parser.add_argument("--exactness-model", default=None, help="model for the exactness checks (default: --model)")
    parser.add_argument("--shapes", default="quickstart,short,long")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--algorithms", default=None, help="comma-separated exactness cases (default: all)")
    parser.add_argument("--skip-bench", action="store_true")
    args = parser.parse_args()
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device visible to torch; run with --device cpu, or on a machine with a GPU")
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    from rl.models import resolve_model

    from tests.packing_exactness import ALGORITHMS

    algorithms = args.algorithms.split(",") if args.algorithms else sorted(ALGORITHMS)
    unknown = sorted(set(algorithms) - set(ALGORITHMS))
    if unknown:
        raise SystemExit(f"unknown exactness case(s) {unknown}; choose from {sorted(ALGORITHMS)}")
    worst = check_exactness(str(resolve_model(args.exactness_model or args.model)), args.device, algorithms)
    if args.skip_bench:
        print(json.dumps({"metric": "packed_vs_padded_max_grad_rel", "value": worst, "reference": 1e-4,
                          "ratio": worst / 1e-4, "unit": "relative"}))
        return
    command = [sys.executable, str(REPO / "bench" / "learner_step.py"), "--device", args.device, "--model", args.model,
               "--shapes", args.shapes, "--repeats", str(args.repeats)]
    raise SystemExit(subprocess.run(command, cwd=REPO, env=dict(os.environ)).returncode)


if __name__ == "__main__":
    main()
