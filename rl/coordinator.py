"""The learner's side of the bus: who the workers are, what they were asked, what came back.

Runs on learner rank 0. It hands tasks to workers, collects scored samples, streams weight
buckets to every worker, and welcomes workers that join mid-run (`rl rollout --connect`) by
sending them the current weights before any task.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from rl.transport import LearnerEndpoint
from rl.wire import (
    Hello,
    SampleMeta,
    Samples,
    SamplingParams,
    Shutdown,
    Task,
    Tasks,
    TensorMeta,
    Weights,
    WeightsLoaded,
    Welcome,
    WorkerFailed,
)

log = logging.getLogger("learner")

# A publication: buckets of (HF name, contiguous CPU tensor) in the rollout dtype.
Buckets = Iterable[list[tuple[str, "object"]]]


class WorkerDied(RuntimeError):
    pass


@dataclass
class Trajectory:
    """One scored sample as the learner holds it."""

    meta: SampleMeta
    prompt_ids: np.ndarray  # (P,) int32
    completion_ids: np.ndarray  # (C,) int32
    rollout_logprobs: np.ndarray  # (C,) float32, vLLM's sampling logprobs

    @property
    def group_key(self) -> str:
        return self.meta.sample_id.rsplit("-s", 1)[0]


@dataclass
class WorkerInfo:
    worker_id: int
    identity: bytes
    name: str
    version: int = -1
    joined_at: float = field(default_factory=time.time)


@dataclass
class SyncStats:
    version: int
    send_seconds: float
    started: float
    acked: dict[int, float] = field(default_factory=dict)  # worker id -> seconds until its ack
    load_seconds: dict[int, float] = field(default_factory=dict)  # worker id -> time inside its engine


class Coordinator:
    def __init__(
        self,
        endpoint: LearnerEndpoint,
        make_welcome: Callable[[int], Welcome],
        current_weights: Callable[[], tuple[int, Buckets]],
    ):
        self.endpoint = endpoint
        self.make_welcome = make_welcome
        self.current_weights = current_weights
        self.workers: dict[bytes, WorkerInfo] = {}
        self.next_worker_id = itertools.count()
        self.next_request_id = itertools.count()
        self.last_sync: SyncStats | None = None

    # ------------------------------------------------------------ membership

    def wait_for_workers(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.workers) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {len(self.workers)} of {count} rollout workers connected to {self.endpoint.address} "
                    f"within {timeout_s:.0f} s"
                )
            self.pump(timeout_ms=500)

    def pump(self, timeout_ms: int) -> tuple[bytes, object, list] | None:
        """Receive one message; membership and acks are handled here, the rest is returned."""
        received = self.endpoint.receive(timeout_ms)
        if received is None:
            return None
        identity, message, payload = received
        if isinstance(message, Hello):
            self.register(identity, message)
            return None
        if isinstance(message, WeightsLoaded):
            self.record_ack(identity, message)
            return None
        if isinstance(message, WorkerFailed):
            raise WorkerDied(f"rollout worker {message.worker_id} failed: {message.error}")
        if identity not in self.workers:
            log.warning("ignored a %s message from an unregistered peer", message.kind)
            return None
        return identity, message, payload

    def register(self, identity: bytes, hello: Hello) -> None:
        worker = WorkerInfo(next(self.next_worker_id), identity, hello.worker_name)
        self.workers[identity] = worker
        self.endpoint.send(identity, self.make_welcome(worker.worker_id))
        version, buckets = self.current_weights()
        if version > 0:
            self.send_weights(version, buckets, [worker])
            self.endpoint.wait_sent()
        else:
            worker.version = 0
        log.info("rollout worker %d joined (%s); %d connected", worker.worker_id, hello.worker_name, len(self.workers))

    def record_ack(self, identity: bytes, ack: WeightsLoaded) -> None:
        if identity in self.workers:
            self.workers[identity].version = ack.version
        if self.last_sync is not None and ack.version == self.last_sync.version:
            self.last_sync.acked[ack.worker_id] = time.perf_counter() - self.last_sync.started
            self.last_sync.load_seconds[ack.worker_id] = ack.load_seconds

    # ------------------------------------------------------------ weights

    def publish(self, version: int, buckets: Buckets) -> SyncStats:
        """Stream every bucket to every worker; returns once ZeroMQ has released the buffers."""
        started = time.perf_counter()
        self.send_weights(version, buckets, list(self.workers.values()))
        self.endpoint.wait_sent()
        self.last_sync = SyncStats(version, time.perf_counter() - started, started)
        return self.last_sync

    def send_weights(self, version: int, buckets: Buckets, workers: list[WorkerInfo]) -> None:
        buckets = list(buckets) if not isinstance(buckets, list) else buckets
        for index, bucket in enumerate(buckets):
            metas = [TensorMeta(name=name, dtype=str(t.dtype).removeprefix("torch."), shape=list(t.shape)) for name, t in bucket]
            frames = [tensor_bytes(t) for _, t in bucket]
            message = Weights(version=version, bucket=index, num_buckets=len(buckets), tensors=metas)
            for worker in workers:
                self.endpoint.send(worker.identity, message, frames, track=True)

    def wait_for_acks(self, version: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while any(w.version < version for w in self.workers.values()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers did not confirm weights version {version} within {timeout_s:.0f} s")
            self.pump(timeout_ms=200)

    # ------------------------------------------------------------ tasks

    def run_tasks(
        self, tasks: list[Task], sampling: SamplingParams, purpose: str, min_version: int, timeout_s: float = 3600
    ) -> list[Trajectory]:
        """Split `tasks` across the workers, wait for every sample, return them in task order."""
        if not self.workers:
            raise WorkerDied("no rollout worker is connected")
        workers = list(self.workers.values())
        pending: dict[int, int] = {}
        for index, chunk in enumerate(split_evenly(tasks, len(workers))):
            if not chunk:
                continue
            request_id = next(self.next_request_id)
            pending[request_id] = index
            message = Tasks(request_id=request_id, purpose=purpose, min_version=min_version, sampling=sampling, tasks=chunk)
            self.endpoint.send(workers[index].identity, message)
        results: dict[int, list[Trajectory]] = {}
        deadline = time.monotonic() + timeout_s
        while len(results) < len(pending):
            if time.monotonic() > deadline:
                raise TimeoutError(f"rollout workers returned {len(results)} of {len(pending)} requests in {timeout_s:.0f} s")
            received = self.pump(timeout_ms=500)
            if received is None:
                continue
            _, message, payload = received
            if isinstance(message, Samples) and message.request_id in pending:
                results[message.request_id] = unpack_samples(message, payload)
        ordered = sorted(results, key=lambda rid: pending[rid])
        return [t for rid in ordered for t in results[rid]]

    def shutdown(self, reason: str) -> None:
        for worker in self.workers.values():
            self.endpoint.send(worker.identity, Shutdown(reason=reason))


def split_evenly(items: list, parts: int) -> Iterator[list]:
    size, extra = divmod(len(items), parts)
    start = 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        yield items[start:end]
        start = end


def tensor_bytes(tensor) -> memoryview:
    """The raw bytes of a contiguous CPU tensor, without a copy (bf16 viewed as 16-bit ints)."""
    import torch

    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    return memoryview(tensor.detach().contiguous().numpy()).cast("B")


def unpack_samples(message: Samples, payload: list[memoryview]) -> list[Trajectory]:
    prompt_ids = np.frombuffer(payload[0], dtype=np.int32)
    completion_ids = np.frombuffer(payload[1], dtype=np.int32)
    logprobs = np.frombuffer(payload[2], dtype=np.float32)
    out, p, c = [], 0, 0
    for meta in message.samples:
        out.append(
            Trajectory(
                meta,
                prompt_ids[p : p + meta.prompt_len],
                completion_ids[c : c + meta.completion_len],
                logprobs[c : c + meta.completion_len],
            )
        )
        p += meta.prompt_len
        c += meta.completion_len
    return out


def drop_stale(trajectories: list[Trajectory], current_version: int, max_staleness: int) -> tuple[list[Trajectory], int]:
    """Keep trajectories at most `max_staleness` versions behind; whole groups go together."""
    stale_groups = {t.group_key for t in trajectories if current_version - t.meta.policy_version > max_staleness}
    kept = [t for t in trajectories if t.group_key not in stale_groups]
    return kept, len(trajectories) - len(kept)
