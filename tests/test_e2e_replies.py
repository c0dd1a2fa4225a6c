"""Lying workers, live: a stand-in built from the real worker (real vLLM generation) joins a run beside an honest
worker and sends each kind of bad reply in turn; it is dropped each time and joins again for the next kind."""

import json
import subprocess
import sys
import time

import pytest

from tests.tampering import EXPECTED_REASON, LIVE_KINDS, NEVER_SENT_TASK
from tests.test_e2e import REPO, assert_no_process_mentions, run_dir_of, write_config

pytestmark = pytest.mark.e2e

STEPS = 2 * len(LIVE_KINDS)  # a dropped worker may miss a step while it joins again


def test_every_kind_of_bad_reply_is_refused_counted_and_never_trained_on(tmp_path, tiny_model_dir):
    config = write_config(tmp_path, tiny_model_dir, steps=STEPS, wait_for_workers=2, no_eval=True)
    train = subprocess.Popen([sys.executable, "-m", "rl.cli", "train", str(config)], cwd=REPO,
                             stdout=(tmp_path / "train.log").open("w"), stderr=subprocess.STDOUT, text=True)
    record = tmp_path / "tampered.jsonl"
    liar = None
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "runs").glob("*/learner_address")):
            assert train.poll() is None, (tmp_path / "train.log").read_text()[-5000:]
            assert time.monotonic() < deadline, "the learner never wrote its address"
            time.sleep(0.3)
        run_dir = run_dir_of(tmp_path)
        address = (run_dir / "learner_address").read_text().strip()
        liar = subprocess.Popen([sys.executable, "-m", "tests.tampering_worker", "--connect", address,
                                 "--kinds", ",".join(LIVE_KINDS), "--record", str(record)], cwd=REPO,
                                stdout=(tmp_path / "liar.log").open("w"), stderr=subprocess.STDOUT)
        assert train.wait(timeout=600) == 0, (tmp_path / "train.log").read_text()[-5000:]
        assert liar.wait(timeout=60) == 0, (tmp_path / "liar.log").read_text()[-3000:]
    finally:
        for proc in (train, liar):
            if proc is not None and proc.poll() is None:
                proc.kill()
    output = (tmp_path / "train.log").read_text()

    tampered = [json.loads(line) for line in record.read_text().splitlines()]
    assert [t["kind"] for t in tampered] == list(LIVE_KINDS), "the stand-in did not get to send every kind"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    last = records[-1]
    expected: dict[str, int] = {}
    for kind in LIVE_KINDS:
        expected[EXPECTED_REASON[kind]] = expected.get(EXPECTED_REASON[kind], 0) + 1
    assert {k: v for k, v in last.items() if k.startswith("wire/rejected/")} == {f"wire/rejected/{k}": v for k, v in expected.items()}
    assert last["wire/rejected"] == len(LIVE_KINDS) and last["workers/lost"] == len(LIVE_KINDS)
    for kind in LIVE_KINDS:  # each drop is logged with its reason
        assert f"it sent an invalid reply ({EXPECTED_REASON[kind]}: " in output, kind

    audit = [json.loads(line) for line in (run_dir / "trained_samples.jsonl").read_text().splitlines()]
    trained = [sample for a in audit for sample in a["sample_ids"]]
    assert len(trained) == len(set(trained)) == STEPS * 2 * 2, "a step lost samples (work not re-sent) or trained one twice"
    bad = {sample for t in tampered for sample in t["sample_ids"]}
    assert not bad & set(trained), "a sample of a refused reply was trained on"
    assert all(NEVER_SENT_TASK not in a["task_ids"] for a in audit)
    assert all(v <= a["step"] - 1 for a in audit for v in a["policy_versions"])  # step k trains on version k-1 (sync)
    assert (run_dir / "final" / "model.safetensors").is_file()
    assert_no_process_mentions(str(run_dir))
