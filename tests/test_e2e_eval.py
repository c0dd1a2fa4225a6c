"""`rl eval` on the tiny model: per-distribution table on the terminal and JSON, run folders and models."""

import json
import subprocess
import sys

import pytest

from tests.test_e2e import REPO, write_config

pytestmark = pytest.mark.e2e


def test_rl_eval_reports_every_distribution_with_mean_and_pass_at_k(tmp_path, tiny_model_dir):
    config = write_config(tmp_path, tiny_model_dir)
    output = tmp_path / "eval.json"
    result = subprocess.run(
        [sys.executable, "-m", "rl.cli", "eval", str(tiny_model_dir), str(config), "eval.samples=3", "eval.temperature=1.0",
         "--output", str(output)],
        cwd=REPO, timeout=600, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    for text in ("mean@3", "pass@3", "add_1d", "add_2d", "overall", "truncated"):
        assert text in result.stdout, text
    report = json.loads(output.read_text())
    assert report["k"] == 3
    rows = report["distributions"]
    assert list(rows) == ["add_1d", "add_2d", "overall"]
    for name in ("add_1d", "add_2d"):
        assert rows[name]["tasks"] == 2 and rows[name]["samples"] == 6  # env.test_size=2, 3 samples each
        assert 0.0 <= rows[name]["accuracy"] <= rows[name]["pass_at_k"] <= 1.0
        assert 1 <= rows[name]["response_len_mean"] <= 8  # rollout.max_new_tokens=8
    assert rows["overall"]["samples"] == 12
    assert rows["add_1d"]["truncated_frac"] > 0  # a random tiny model rarely stops within 8 tokens


def test_rl_eval_of_a_run_folder_without_a_final_model_says_so(tmp_path, tiny_model_dir):
    config = write_config(tmp_path, tiny_model_dir)
    run_dir = tmp_path / "unfinished"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(config.read_text())
    result = subprocess.run([sys.executable, "-m", "rl.cli", "eval", str(run_dir)], cwd=REPO, timeout=120, capture_output=True, text=True)
    assert result.returncode == 2
    assert "has no trained model in final/" in result.stderr
    missing = subprocess.run([sys.executable, "-m", "rl.cli", "eval", str(tmp_path / "nope")], cwd=REPO, timeout=120,
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "give a config" in missing.stderr
