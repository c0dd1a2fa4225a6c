"""A learner killed after step 5 (checkpoint at 3), then `--resume` to step 6: the W&B run of the
resumed training holds exactly the steps and values of metrics.jsonl (offline W&B, tiny model)."""

import json
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.test_e2e import REPO, assert_no_process_mentions, write_config
from tests.wandb_history import differences, metrics_rows, wandb_history, wandb_run_record

pytestmark = pytest.mark.e2e


def lines(path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def run_until_step_then_kill_the_learner(tmp_path, tiny_model_dir, step: int):
    config = write_config(tmp_path, tiny_model_dir, steps=6, checkpoint_every=3, no_eval=True)
    log = tmp_path / "train.log"
    train = subprocess.Popen([sys.executable, "-m", "rl.cli", "train", str(config)], cwd=REPO,
                             stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 400
        while not (found := list((tmp_path / "runs").glob("*/metrics.jsonl"))) or lines(found[0]) < step:
            assert train.poll() is None, log.read_text()[-5000:]
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.05)
        run_dir = found[0].parent
        (learner,) = [p for p in psutil.Process(train.pid).children(recursive=True)
                      if "learner.main" in " ".join(p.cmdline())]
        learner.send_signal(signal.SIGKILL)  # a hard kill: nothing after step 5 is saved or flushed
        assert lines(run_dir / "metrics.jsonl") == step, "step 6 finished before the kill: the test lost its race"
        assert train.wait(timeout=120) != 0
    finally:
        if train.poll() is None:
            train.kill()
    return run_dir


def test_a_resume_after_a_killed_learner_leaves_one_wandb_run_that_matches_metrics_jsonl(tmp_path, tiny_model_dir):
    run_dir = run_until_step_then_kill_the_learner(tmp_path, tiny_model_dir, step=5)
    killed_runs = {p.name for p in (run_dir / "wandb").glob("offline-run-*")}
    (killed_run,) = killed_runs
    killed_id = killed_run.rsplit("-", 1)[1]
    assert json.loads((run_dir / "checkpoints" / "step-000003" / "trainer_state.json").read_text())["wandb_id"] == killed_id

    resumed = subprocess.run([sys.executable, "-m", "rl.cli", "train", "--resume", str(run_dir)], cwd=REPO,
                             timeout=600, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout

    expected = metrics_rows(run_dir / "metrics.jsonl")
    assert [r["step"] for r in expected] == [1, 2, 3, 4, 5, 6]  # one line per step: 4 and 5 of the killed run are gone
    audit = [json.loads(line)["step"] for line in (run_dir / "trained_samples.jsonl").read_text().splitlines()]
    assert audit == [1, 2, 3, 4, 5, 6]
    named = (run_dir / "wandb" / "latest-run").resolve()  # the run the README names for the resumed training
    assert named.name not in killed_runs
    assert f"wandb sync {named}" in resumed.stdout
    assert differences(expected, wandb_history(named)) == []
    run = wandb_run_record(named)
    assert run["config"]["update"]["resumed_from"] == killed_id and run["config"]["update"]["resumed_at_step"] == 3
    assert run["display_name"] == run["run_group"] == run_dir.name
    assert_no_process_mentions(str(run_dir))
