"""A rollout worker: connect to the learner, generate and score samples, load new weights in place.

The worker is a loop over the messages of one connection; ZeroMQ keeps them in order, so by the
time a `Tasks` message asks for policy version v, the weights of v have already been loaded.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import numpy as np

from rewards.pool import RewardPool
from rl.config import RolloutConfig
from rl.memory import gpu_peak_bytes, peak_rss_bytes
from rl.process_env import DISTRIBUTED_ENV
from rl.transport import WorkerEndpoint
from rl.wire import (
    NUMPY_DTYPES,
    Hello,
    RolloutTimings,
    Samples,
    Shutdown,
    Tasks,
    Weights,
    WeightsLoaded,
    Welcome,
    WorkerFailed,
    sample_prefix,
)
from rollout.heartbeat import HeartbeatThread
from rollout.sampling import sample_and_score

log = logging.getLogger("rollout")

LEFT_PREFIX = "left: "  # a WorkerFailed that is a goodbye, not a failure


class RolloutWorker:
    def __init__(self, address: str, name: str | None = None, welcome_timeout_s: float = 600.0, curve_keys: str | None = None):
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.version = 0
        welcome = self.connect(address, welcome_timeout_s, curve_keys)
        self.config = RolloutConfig.model_validate(welcome.rollout)
        self.rewards = RewardPool(
            welcome.reward_sets, self.config.reward_processes, self.config.reward_timeout_s, modules=welcome.reward_modules
        )
        self.run_dir = Path(welcome.run_dir)
        self.pending_buckets: list[tuple[Weights, list[memoryview]]] = []
        log.info("worker %d (%s) joined; loading %s", self.worker_id, self.name, welcome.model_path)

        from transformers import AutoTokenizer

        from rollout.engine import RolloutEngine

        self.tokenizer = AutoTokenizer.from_pretrained(welcome.model_path)
        self.parameter_shapes = hf_parameter_shapes(Path(welcome.model_path))
        self.rejected_buckets = 0
        self.engine = RolloutEngine(
            welcome.model_path,
            dtype=self.config.dtype,
            seed=welcome.seed + self.worker_id,
            max_model_len=self.config.max_model_len,
            kv_cache_gib=self.config.kv_cache_gib,
            enforce_eager=self.config.enforce_eager,
            gpu_memory_utilization=self.config.gpu_memory_utilization,
            gpu_memory_gib=self.config.gpu_memory_gib,
            cpu_threads=self.config.cpu_threads,
        )
        # The learner sends no task before this: the first step's rollout time is generation, not engine start-up.
        self.endpoint.send(WeightsLoaded(worker_id=self.worker_id, version=0, load_seconds=self.engine.timings["engine_start_s"]))

    def connect(self, address: str, timeout_s: float, curve_keys: str | None, identity: bytes | None = None) -> Welcome:
        """Say hello, wait for the learner's Welcome, start heartbeating as the worker id it gave."""
        self.endpoint = WorkerEndpoint(address, curve_keys=curve_keys, identity=identity)
        self.endpoint.send(Hello(worker_name=self.name, pid=os.getpid(), host=socket.gethostname()))
        welcome = self.wait_for_welcome(address, timeout_s)
        self.worker_id = welcome.worker_id
        self.heartbeat = HeartbeatThread(
            address, self.worker_id, lambda: self.version, welcome.heartbeat_interval_s, welcome.learner_timeout_s, curve_keys
        )
        self.heartbeat.start()
        return welcome

    def wait_for_welcome(self, address: str, timeout_s: float) -> Welcome:
        """The learner's Welcome; fails fast when the learner refuses this worker's CURVE key."""
        import zmq

        refused = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        monitor = self.endpoint.socket.get_monitor_socket(refused)
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                received = self.endpoint.receive(timeout_ms=500)
                if received is not None and isinstance(received[0], Welcome):
                    return received[0]
                if monitor.poll(0):
                    raise PermissionError(
                        f"the learner at {address} refused this worker's connection (CURVE handshake failed): check --keys "
                        "(the learner's server.key, and this worker's public key in the learner's authorized_workers/)"
                    )
        finally:
            self.endpoint.socket.disable_monitor()
            monitor.close(linger=0)
        raise TimeoutError(f"no learner answered at {address} within {timeout_s:.0f} s; is `rl train` running there?")

    def run(self) -> None:
        try:
            self.serve()
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: say goodbye so the learner re-sends our prompts at once
            self.endpoint.send(WorkerFailed(worker_id=self.worker_id, error=f"{LEFT_PREFIX}it was stopped (Ctrl-C or SIGTERM)"))
            raise
        except Exception as err:
            self.endpoint.send(WorkerFailed(worker_id=self.worker_id, error=f"{type(err).__name__}: {err}"))
            raise
        finally:
            self.heartbeat.stop()
            self.engine.close()
            self.rewards.close()
            self.endpoint.close()

    def serve(self) -> Shutdown:
        """Answer the learner's messages until it says to stop."""
        while True:
            received = self.endpoint.receive(timeout_ms=1000)
            if received is None:
                continue
            message, payload = received
            if isinstance(message, Weights):
                self.load_bucket(message, payload)
            elif isinstance(message, Tasks):
                answer = self.generate(message)
                if answer is not None:
                    self.endpoint.send(*answer)
            elif isinstance(message, Shutdown):
                log.info("worker %d: shutdown (%s)", self.worker_id, message.reason)
                return message

    def load_bucket(self, message: Weights, payload: list[memoryview]) -> None:
        """Hold buckets until the last one of a version has arrived, then load them all.

        Loading a bucket while ZeroMQ's I/O thread still receives the next one makes the engine's
        multi-threaded kernel repack fight that thread for the cores (measured on 2 cores: 0.57 s
        instead of 0.24 s per sync), so the transfer is left to finish first.
        """
        problem = self.bucket_problem(message)
        if problem:
            self.rejected_buckets += 1
            log.warning("worker %d: rejected weights (version %d, bucket %d): %s", self.worker_id, message.version, message.bucket, problem)
            self.pending_buckets = []  # a version with a bad bucket is never loaded
            return
        if message.bucket == 0:
            self.pending_buckets = []
        self.pending_buckets.append((message, payload))
        if message.bucket < message.num_buckets - 1:
            return
        import torch

        start = time.perf_counter()
        for bucket, frames in self.pending_buckets:
            named = []
            for meta, frame in zip(bucket.tensors, frames):
                array = np.frombuffer(frame, dtype=NUMPY_DTYPES[meta.dtype]).reshape(meta.shape)
                tensor = torch.from_numpy(array)
                if meta.dtype == "bfloat16":
                    tensor = tensor.view(torch.bfloat16)
                named.append((meta.name, tensor))
            self.engine.load_weights(named)
        self.pending_buckets = []
        self.version = message.version
        load_seconds = time.perf_counter() - start
        self.endpoint.send(WeightsLoaded(worker_id=self.worker_id, version=self.version, load_seconds=load_seconds))
        if self.config.debug_dump_weights:
            from safetensors.torch import save_file

            snapshot = self.engine.parameters_snapshot()
            save_file(snapshot, str(self.run_dir / f"worker-{self.worker_id}-weights.safetensors"), metadata={"version": str(self.version)})

    def bucket_problem(self, message: Weights) -> str | None:
        """Why a weights bucket cannot be loaded (unknown names, wrong shapes, out of sequence), or None."""
        expected_bucket = len(self.pending_buckets) if message.bucket else 0
        if message.bucket != expected_bucket or (self.pending_buckets and self.pending_buckets[0][0].version != message.version):
            return f"out of sequence (expected bucket {expected_bucket} of the version in progress)"
        if message.version <= self.version:
            return f"version {message.version} is not newer than the loaded {self.version}"
        for meta in message.tensors:
            shape = self.parameter_shapes.get(meta.name)
            if shape is None:
                return f"unknown parameter {meta.name!r}"
            if list(shape) != meta.shape:
                return f"{meta.name} has shape {meta.shape}, the model's is {list(shape)}"
        return None

    def generate(self, request: Tasks) -> tuple[Samples, list[np.ndarray]] | None:
        if self.version < request.min_version:  # the learner sends weights first; only a confused peer gets here
            log.warning("worker %d: request %d needs policy version %d but it holds %d; ignored",
                        self.worker_id, request.request_id, request.min_version, self.version)
            return None
        started = time.perf_counter()
        batch = sample_and_score(
            self.engine, self.tokenizer, self.rewards, request.tasks, request.sampling,
            sample_prefix=sample_prefix(self.worker_id, request.request_id), policy_version=self.version, worker_id=self.worker_id,
        )
        frames = batch.frames()
        timings = RolloutTimings(generate_seconds=batch.generate_seconds, score_seconds=batch.score_seconds,
                                 worker_seconds=time.perf_counter() - started, peak_rss_bytes=peak_rss_bytes(),
                                 gpu_peak_bytes=gpu_peak_bytes())
        tokens = len(batch.completion_ids)
        log.info("worker %d: request %d: %d prompts, %d tokens; generate %.2f s (%.1f tokens/s), score %.2f s, in all %.2f s",
                 self.worker_id, request.request_id, len(request.tasks), tokens, timings.generate_seconds,
                 tokens / max(timings.generate_seconds, 1e-9), timings.score_seconds, timings.worker_seconds)
        header = Samples(request_id=request.request_id, purpose=request.purpose, worker_id=self.worker_id, samples=batch.metas,
                         timings=timings)
        return header, frames


def hf_parameter_shapes(model_dir: Path) -> dict[str, list[int]]:
    """Parameter name -> shape from the model's safetensors headers (no tensor is read)."""
    from safetensors import safe_open

    shapes: dict[str, list[int]] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                shapes[name] = list(handle.get_slice(name).get_shape())
    if "lm_head.weight" not in shapes and "model.embed_tokens.weight" in shapes:  # tied embeddings
        shapes["lm_head.weight"] = shapes["model.embed_tokens.weight"]
    return shapes


def main(address: str, name: str | None = None, curve_keys: str | None = None) -> None:
    import signal

    from rl.console import setup_logging

    setup_logging()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    for key in DISTRIBUTED_ENV:  # a worker is never a learner rank; vLLM must not join a group it sees there
        os.environ.pop(key, None)  # SIGTERM leaves like Ctrl-C: with a goodbye
    RolloutWorker(address, name, curve_keys=curve_keys).run()
