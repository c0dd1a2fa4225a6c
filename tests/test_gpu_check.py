"""scripts/gpu_learner_check.py, run on the CPU with the tiny model, so that the GPU check cannot rot."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rl.process_env import DISTRIBUTED_ENV

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_gpu_learner_check_runs_on_cpu(tiny_model_dir):
    command = [sys.executable, "scripts/gpu_learner_check.py", "--device", "cpu", "--model", str(tiny_model_dir),
               "--algorithms", "grpo,ppo", "--shapes", "short", "--repeats", "1"]
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}  # earlier in-process tests set MASTER_PORT
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert sum(line.startswith("exactness") and line.endswith("ok") for line in lines) == 2, out.stdout
    result = json.loads(lines[-1])
    assert result["metric"] == "learner_step_tokens_per_s_short" and result["value"] > 0 and result["reference"] > 0
