"""Weight sync of the default model, learner -> rollout worker, against a raw ZeroMQ transfer.

sync:      the learner's real path: gather + cast (iter_publish_tensors on a DeepSpeed engine),
           bucketed zero-copy sends over the ROUTER socket, and a real rollout worker process that
           loads every bucket into its live vLLM engine and acknowledges; timed until the ack.
reference: the same frames (same count and sizes, same socket types) sent from preallocated
           buffers to a process that only receives them and acknowledges.

    python bench/weight_sync.py [--repeats 5] [--bucket-mb 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zmq

sys.path.insert(0, str(Path(__file__).parents[1]))

from learner.engine import build_policy_engine, init_distributed, iter_publish_tensors  # noqa: E402
from rl.config import RolloutConfig  # noqa: E402
from rl.coordinator import Coordinator  # noqa: E402
from rl.models import resolve_model  # noqa: E402
from rl.transport import LearnerEndpoint  # noqa: E402
from rl.wire import Welcome  # noqa: E402

RAW_RECEIVER = """
import sys, zmq
sock = zmq.Context.instance().socket(zmq.DEALER)
sock.setsockopt(zmq.RCVHWM, 0)
sock.connect(sys.argv[1])
sock.send(b"ready")
while True:
    parts = sock.recv_multipart(copy=False)
    if parts[0].bytes == b"stop":
        break
    if parts[0].bytes == b"last":
        sock.send(b"ack")
"""


def raw_transfer(bucket_sizes: list[list[int]], repeats: int) -> list[float]:
    """Send frames of the given sizes (one multipart message per bucket) to a bare receiver."""
    context = zmq.Context.instance()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.SNDHWM, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    receiver = subprocess.Popen([sys.executable, "-c", RAW_RECEIVER, f"tcp://127.0.0.1:{port}"])
    identity, _ = router.recv_multipart()
    buffers = [[np.ones(size, dtype=np.uint8) for size in sizes] for sizes in bucket_sizes]
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        for i, frames in enumerate(buffers):
            marker = b"last" if i == len(buffers) - 1 else b"more"
            router.send_multipart([identity, marker, *frames], copy=False)
        router.recv_multipart()
        times.append(time.perf_counter() - start)
    router.send_multipart([identity, b"stop"])
    receiver.wait(timeout=60)
    router.close()
    return times[1:]  # the first is a warm-up


def real_sync(model_path: Path, bucket_mb: int, repeats: int) -> tuple[list[float], list[list[int]]]:
    init_distributed()
    engine = build_policy_engine(
        str(model_path), lr=1e-6, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0, total_steps=1, zero_stage=1,
        micro_batch_size=1, grad_accum_steps=1, grad_clip=1.0, dtype="float32", seed=0,
    )
    bucket_bytes = bucket_mb * 2**20
    sizes = [[t.numel() * t.element_size() for _, t in bucket] for bucket in iter_publish_tensors(engine, torch.float32, bucket_bytes)]
    run_dir = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    rollout = RolloutConfig(kv_cache_gib=0.5, max_model_len=512)
    welcome = lambda wid: Welcome(worker_id=wid, model_path=str(model_path), rollout=rollout.model_dump(mode="json"),
                                  reward_sets={"default": [{"name": "boxed_answer", "weight": 1.0}]}, seed=0, run_dir=str(run_dir))
    endpoint = LearnerEndpoint()
    coordinator = Coordinator(endpoint, welcome, lambda: (0, []))
    worker = subprocess.Popen([sys.executable, "-m", "rollout.main", "--connect", endpoint.address], cwd=Path(__file__).parents[1])
    try:
        coordinator.wait_for_workers(1, timeout_s=600)
        times, loads = [], []
        for version in range(1, repeats + 2):
            start = time.perf_counter()
            coordinator.publish(version, iter_publish_tensors(engine, torch.float32, bucket_bytes))
            coordinator.wait_for_acks(version, timeout_s=600)
            times.append(time.perf_counter() - start)
            loads.append(coordinator.last_sync.load_seconds.get(0, float("nan")))
        print(f"worker time inside vLLM (copy + kernel repack): median {statistics.median(loads[1:]):.3f} s")
        coordinator.shutdown("benchmark done")
        worker.wait(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
        endpoint.close()
    return times[1:], sizes  # the first sync includes the worker's first-touch of its buffers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bucket-mb", type=int, default=64)
    args = parser.parse_args()
    model_path = resolve_model("smollm2-135m-instruct")
    sync_times, sizes = real_sync(model_path, args.bucket_mb, args.repeats)
    raw_times = raw_transfer(sizes, args.repeats)
    total_mb = sum(map(sum, sizes)) / 2**20
    sync, raw = statistics.median(sync_times), statistics.median(raw_times)
    print(f"weights: {total_mb:.1f} MiB in {len(sizes)} buckets of <= {args.bucket_mb} MiB")
    print(f"full sync (gather+cast+send+vLLM load+ack): median {sync:.3f} s  runs {[round(t, 3) for t in sync_times]}")
    print(f"raw ZeroMQ transfer of the same frames:     median {raw:.3f} s  runs {[round(t, 3) for t in raw_times]}")
    print(json.dumps({"metric": "weight_sync_seconds", "value": round(sync, 4), "reference": round(raw, 4),
                      "ratio": round(sync / raw, 3), "unit": "s"}))


if __name__ == "__main__":
    main()
