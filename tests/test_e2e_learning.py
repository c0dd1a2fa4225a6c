"""The loop learns, in the direction the reward says: real vLLM, DeepSpeed and ZeroMQ on the tiny model.

The reward is the share of completion tokens equal to one token id (tests/rewards_for_tests.py:
token_share, named by file as a user names theirs). Trained on it, the share rises; trained on
its negation (weight -1), it falls. A sign error anywhere in the policy loss or the advantages
fails one of the two. The component's raw value is logged per step as reward/token_share.
"""

import json
import subprocess
import sys

import pytest

from tests.test_e2e import REPO, run_dir_of, write_config

pytestmark = pytest.mark.e2e

# Chosen on the seeded tiny model (tests/tiny_model.py, seed 0) at this temperature: a token its
# samples already hold at a share well inside (0, 1), so the share can move either way.
TOKEN_ID = 198  # "\n": the token the random model repeats after the prompt's last "\n"
TEMPERATURE = 0.08  # at 1.0 the random model spreads over all 49k tokens; here "\n" holds about half
STEPS = 6
MARGIN = 0.15  # mean share of the last 2 steps against the first 2


def train_on_token_share(tmp_path, tiny_model_dir, weight: float) -> list[float]:
    reward = f"[{{name: '{REPO / 'tests' / 'rewards_for_tests.py'}:token_share', token_id: {TOKEN_ID}, weight: {weight}}}]"
    config = write_config(tmp_path, tiny_model_dir, steps=STEPS, no_eval=True)
    overrides = [f"rewards={reward}", f"rollout.temperature={TEMPERATURE}", "rollout.prompts_per_step=4",
                 "rollout.samples_per_prompt=8", "rollout.max_new_tokens=8", "train.lr=3e-3", "train.micro_batch_size=8",
                 "logging.wandb=disabled"]
    result = subprocess.run([sys.executable, "-m", "rl.cli", "train", str(config), *overrides], cwd=REPO, timeout=600,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    records = [json.loads(line) for line in (run_dir_of(tmp_path) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    return [r["reward/token_share"] for r in records]


def first_and_last(shares: list[float]) -> tuple[float, float]:
    return sum(shares[:2]) / 2, sum(shares[-2:]) / 2


@pytest.mark.parametrize("weight", [1.0, -1.0], ids=["reward", "negated"])
def test_the_share_of_the_rewarded_token_moves_the_way_the_reward_says(tmp_path, tiny_model_dir, weight):
    shares = train_on_token_share(tmp_path, tiny_model_dir, weight)
    first, last = first_and_last(shares)
    print(f"weight {weight}: share per step {[round(s, 3) for s in shares]}")
    assert 0.05 < first < 0.95, f"the chosen token's starting share {first:.3f} leaves no room to move: pick another"
    if weight > 0:
        assert last > first + MARGIN, f"rewarded, the share went {first:.3f} -> {last:.3f}: {shares}"
    else:
        assert last < first - MARGIN, f"penalised, the share went {first:.3f} -> {last:.3f}: {shares}"
