"""`rl train --resume` on a tampered run folder: a changed byte and a planted pickle payload are refused
before any process starts, naming the file; `--resume RUN --step K` then continues from the intact checkpoint."""

import json
import subprocess
import sys

import pytest
import torch

from tests.test_e2e import REPO, run_dir_of, write_config

pytestmark = pytest.mark.e2e


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('the payload ran')",)


def rl(*args):
    return subprocess.run([sys.executable, "-m", "rl.cli", *args], cwd=REPO, timeout=600, capture_output=True, text=True)


def one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return errors[0]


def test_a_tampered_checkpoint_is_refused_and_an_older_step_resumes(tmp_path, tiny_model_dir):
    from learner.checkpoint import check_intact
    from learner.safe_load import safe_torch_load
    from rl.checkpoint_manifest import MANIFEST_FILE, write_manifest

    config = write_config(tmp_path, tiny_model_dir, steps=2, checkpoint_every=1, no_eval=True)
    first = rl("train", str(config))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    run_dir = run_dir_of(tmp_path)
    step1, step2 = run_dir / "checkpoints" / "step-000001", run_dir / "checkpoints" / "step-000002"
    assert (step1 / MANIFEST_FILE).is_file() and (step2 / MANIFEST_FILE).is_file()
    target = step2 / "deepspeed" / "mp_rank_00_model_states.pt"
    original = target.read_bytes()

    # one byte changed: refused before any process starts, naming the file and the intact checkpoint
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0x01
    target.write_bytes(bytes(changed))
    refused = rl("train", "--resume", str(run_dir))
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    line = one_error_line(refused.stderr)
    assert str(target) in line and "does not match its sha256" in line, line
    assert f"rl train --resume {run_dir} --step 1" in line, line
    assert "resuming" not in refused.stdout

    # a planted __reduce__ payload with the manifest rewritten to match: never runs, refused with a clear error
    target.write_bytes(original)
    marker = tmp_path / "payload-ran"
    state = safe_torch_load(target)
    state["planted"] = Payload(marker)
    torch.save(state, target)
    (step2 / MANIFEST_FILE).unlink()
    write_manifest(step2)
    refused = rl("train", "--resume", str(run_dir))
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    line = one_error_line(refused.stderr)
    assert str(target) in line and "builtins.exec" in line and "never unpickles" in line, line
    assert not marker.exists(), "the payload ran"

    # --step 1: resumes from the intact checkpoint, sets the tampered one aside, trains step 2 again
    resumed = rl("train", "--resume", str(run_dir), "--step", "1")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "step 1," in resumed.stdout, resumed.stdout[-2000:]
    assert not marker.exists(), "the payload ran"
    (aside,) = (run_dir / "checkpoints").glob("set-aside-*/step-000002")
    assert (aside / "deepspeed" / "mp_rank_00_model_states.pt").read_bytes() != original  # the tampered one, kept aside
    check_intact(step2)  # written again by the resumed run, with its own manifest
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    audit = [json.loads(line) for line in (run_dir / "trained_samples.jsonl").read_text().splitlines()]
    assert [a["step"] for a in audit] == [1, 2]

    bad_step = rl("train", "--resume", str(run_dir), "--step", "7")
    assert bad_step.returncode == 2 and "has no checkpoint of step 7; it has steps [1, 2]" in bad_step.stderr, bad_step.stderr
    no_resume = rl("train", str(config), "--step", "1")
    assert no_resume.returncode == 2 and "--step K needs --resume RUN_DIR" in no_resume.stderr, no_resume.stderr
