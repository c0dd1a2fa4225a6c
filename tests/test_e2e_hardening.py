"""The hardened wire, live: fuzzing a running learner and a running worker, and CURVE keys end to end."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from tests.fuzz import malformed_messages
from tests.test_e2e import (
    REPO,
    assert_no_process_mentions,
    run_dir_of,
    start_train_and_wait_for_steps,
    write_config,
)

pytestmark = pytest.mark.e2e


def test_a_live_learner_survives_1000_malformed_messages(tmp_path, tiny_model_dir):
    import signal

    train, run_dir = start_train_and_wait_for_steps(tmp_path, tiny_model_dir, steps_done=1)
    address = (run_dir / "learner_address").read_text().strip()
    garbage = malformed_messages(1000, seed=1, big=False) + malformed_messages(8, seed=2, big=True)[-8:]
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 60_000)  # closing must not discard what is still queued
    sock.connect(address)
    for frames in garbage:
        sock.send_multipart(frames)
    sock.close()
    metrics = run_dir / "metrics.jsonl"
    done_before = len(metrics.read_text().splitlines())
    deadline = time.monotonic() + 180
    while len(metrics.read_text().splitlines()) < done_before + 2:  # two more full steps after the flood
        assert train.poll() is None, (tmp_path / "train.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the learner made no progress after the flood"
        time.sleep(0.5)
    last = json.loads(metrics.read_text().splitlines()[-1])
    assert last["wire/rejected"] >= 1000 and last["workers/alive"] == 1
    train.send_signal(signal.SIGINT)
    assert train.wait(timeout=300) == 130
    assert_no_process_mentions(str(run_dir))


def test_a_live_worker_survives_1000_malformed_messages_and_bad_weights(tmp_path, tiny_model_dir):
    """A stand-in learner (a raw ROUTER) welcomes a real `rl rollout` worker, floods it, then asks for work."""
    from rl.config import RolloutConfig
    from rl.wire import (
        Samples,
        SamplingParams,
        Shutdown,
        Task,
        Tasks,
        TensorMeta,
        Weights,
        Welcome,
        decode,
        encode,
    )

    context = zmq.Context.instance()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    worker = subprocess.Popen([sys.executable, "-m", "rl.cli", "rollout", "--connect", f"tcp://127.0.0.1:{port}"], cwd=REPO,
                              stdout=(tmp_path / "worker.log").open("w"), stderr=subprocess.STDOUT)

    def next_message(kind, timeout_s=120):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if router.poll(500):
                identity, *frames = router.recv_multipart()
                message, payload = decode(frames)
                if message.kind == kind:
                    return identity, message, payload
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
        raise AssertionError(f"no {kind} from the worker")

    try:
        identity, _, _ = next_message("hello")
        rollout = RolloutConfig(max_new_tokens=4, max_model_len=256, kv_cache_gib=0.25, reward_processes=1).model_dump(mode="json")
        welcome = Welcome(worker_id=0, model_path=str(tiny_model_dir), rollout=rollout, seed=0, run_dir=str(tmp_path),
                          reward_sets={"default": [{"name": "boxed_answer", "weight": 1.0}]})
        router.send_multipart([identity, *encode(welcome)])
        next_message("heartbeat")  # up and beating
        for frames in malformed_messages(1000, seed=3, big=False):
            router.send_multipart([identity, *frames])
        # well-formed but unusable weights: an unknown parameter, a wrong shape, a bucket out of sequence
        for meta, bucket in ((TensorMeta(name="model.nope.weight", dtype="float32", shape=[2]), 0),
                             (TensorMeta(name="model.norm.weight", dtype="float32", shape=[3]), 0),
                             (TensorMeta(name="model.norm.weight", dtype="float32", shape=[64]), 1)):
            data = np.zeros(meta.shape, np.float32)
            router.send_multipart([identity, *encode(Weights(version=1, bucket=bucket, num_buckets=2, tensors=[meta]), [data])])
        task = Task(task_id="t0", distribution="add_1d", messages=[{"role": "user", "content": "What is 1 + 1?"}], answer="2")
        sampling = SamplingParams(n=2, temperature=1.0, top_p=1.0, max_tokens=4, seed=0)
        router.send_multipart([identity, *encode(Tasks(request_id=7, purpose="train", min_version=0, sampling=sampling, tasks=[task]))])
        _, samples, _ = next_message("samples")
        assert isinstance(samples, Samples) and samples.request_id == 7 and len(samples.samples) == 2
        assert all(s.policy_version == 0 for s in samples.samples), "a rejected weights bucket was loaded"
        router.send_multipart([identity, *encode(Shutdown(reason="test over"))])
        assert worker.wait(timeout=60) == 0
        log = (tmp_path / "worker.log").read_text()
        assert "rejected weights" in log and "unknown parameter" in log
    finally:
        if worker.poll() is None:
            worker.kill()
        router.close()


def test_curve_keys_encrypt_the_run_and_refuse_a_stranger(tmp_path, tiny_model_dir):
    keys, strangers = tmp_path / "keys", tmp_path / "strangers"
    for folder in (keys, strangers):
        made = subprocess.run([sys.executable, "-m", "rl.cli", "keys", str(folder)], cwd=REPO, capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
    # the stranger knows the learner's public key, but its own key was never authorized
    (strangers / "server.key").write_bytes((keys / "server.key").read_bytes())
    config = write_config(tmp_path, tiny_model_dir)
    train = subprocess.Popen([sys.executable, "-m", "rl.cli", "train", str(config), f"transport.curve_keys={keys}"], cwd=REPO,
                             stdout=(tmp_path / "train.log").open("w"), stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "runs").glob("*/learner_address")):
            assert train.poll() is None, (tmp_path / "train.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.3)
        address = (run_dir_of(tmp_path) / "learner_address").read_text().strip()
        stranger = subprocess.run([sys.executable, "-m", "rl.cli", "rollout", "--connect", address, "--keys", str(strangers)],
                                  cwd=REPO, capture_output=True, text=True, timeout=120)
        assert stranger.returncode == 2 and "refused" in stranger.stderr, stranger.stderr[-2000:]
        assert train.wait(timeout=600) == 0, (tmp_path / "train.log").read_text()[-3000:]
    finally:
        if train.poll() is None:
            train.kill()
    output = (tmp_path / "train.log").read_text()
    assert "CURVE encryption; 1 authorized worker key" in output
    assert "refused a worker whose CURVE public key" in output
    assert (run_dir_of(tmp_path) / "final" / "model.safetensors").is_file()
