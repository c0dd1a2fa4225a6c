"""The learner's side of the bus: who the workers are, what they were asked, what came back.

Runs on learner rank 0. It hands tasks to workers, collects scored samples, streams weight
buckets to every worker, and welcomes workers that join mid-run (`rl rollout --connect`) by
sending them the current weights before any task.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import zmq

from rl.transport import LearnerEndpoint
from rl.wire import (
    Heartbeat,
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
    last_seen: float = field(default_factory=time.monotonic)


@dataclass
class SyncStats:
    version: int
    send_seconds: float
    started: float
    acked: dict[int, float] = field(default_factory=dict)  # worker id -> seconds until its ack
    load_seconds: dict[int, float] = field(default_factory=dict)  # worker id -> time inside its engine


@dataclass
class Request:
    """Tasks sent to one worker; re-sent under a new id to another worker if that one is lost."""

    tasks: list[Task]
    sampling: SamplingParams
    position: int  # order of this chunk among the call's chunks
    identity: bytes


class NoWorkersLeft(RuntimeError):
    """Every rollout worker is gone and none joined within transport.no_workers_wait_s."""


class Coordinator:
    def __init__(
        self,
        endpoint: LearnerEndpoint,
        make_welcome: Callable[[int], Welcome],
        current_weights: Callable[[], tuple[int, Buckets]],
        heartbeat_timeout_s: float = 30.0,
        no_workers_wait_s: float = 300.0,
        vocab_size: int | None = None,
    ):
        self.endpoint = endpoint
        self.make_welcome = make_welcome
        self.current_weights = current_weights
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.no_workers_wait_s = no_workers_wait_s
        self.vocab_size = vocab_size
        self.workers: dict[bytes, WorkerInfo] = {}
        self.lost: dict[int, str] = {}  # worker id -> why it was dropped
        self.next_worker_id = itertools.count()
        self.next_request_id = itertools.count()
        self.last_sync: SyncStats | None = None
        self.reassigned_requests = 0
        self.lost_events: list[str] = []  # drained into the step's metrics and log

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
        """Receive one message; membership, heartbeats and acks are handled here, the rest is returned."""
        received = self.endpoint.receive(timeout_ms)
        if received is None:
            return None
        identity, message, payload = received
        if isinstance(message, Heartbeat):
            worker = self.by_id(message.worker_id)
            if worker is not None:
                worker.last_seen = time.monotonic()
            return None
        if isinstance(message, Hello):
            self.register(identity, message)
            return None
        worker = self.workers.get(identity)
        if worker is None:
            log.debug("ignored a %s message from an unknown or dropped peer", message.kind)
            return None
        worker.last_seen = time.monotonic()
        if isinstance(message, WeightsLoaded):
            self.record_ack(identity, message)
            return None
        if isinstance(message, WorkerFailed):
            self.drop(worker, f"it reported a failure: {message.error}")
            return None
        return identity, message, payload

    def by_id(self, worker_id: int) -> WorkerInfo | None:
        return next((w for w in self.workers.values() if w.worker_id == worker_id), None)

    def register(self, identity: bytes, hello: Hello) -> None:
        if identity in self.workers:
            log.warning("worker %s said hello twice; ignored", hello.worker_name)
            return
        worker = WorkerInfo(next(self.next_worker_id), identity, hello.worker_name)
        self.workers[identity] = worker
        if not self.send(worker, self.make_welcome(worker.worker_id)):
            return
        version, buckets = self.current_weights()
        if version > 0:
            self.send_weights(version, buckets, [worker])
            self.endpoint.wait_sent()
        else:
            worker.version = 0
        log.info("rollout worker %d joined (%s); %d connected", worker.worker_id, hello.worker_name, len(self.workers))

    def drop(self, worker: WorkerInfo, reason: str) -> None:
        """Forget a worker (dead, silent or failed); its unfinished requests are re-sent by run_tasks."""
        if self.workers.pop(worker.identity, None) is None:
            return
        self.lost[worker.worker_id] = reason
        message = f"rollout worker {worker.worker_id} ({worker.name}) lost: {reason}; {len(self.workers)} left"
        self.lost_events.append(message)
        log.warning("%s", message)
        try:  # if it is merely stuck, tell it to stop rather than come back with stale work
            self.endpoint.send(worker.identity, Shutdown(reason=f"dropped by the learner: {reason}"))
        except zmq.ZMQError:
            pass

    def check_liveness(self) -> None:
        """Drop workers silent for longer than the heartbeat timeout.

        Judged only when no message is waiting: after a long learner step the heartbeats that
        queued meanwhile must be read before anyone is declared silent.
        """
        if self.endpoint.has_pending():
            return
        now = time.monotonic()
        for worker in list(self.workers.values()):
            silent = now - worker.last_seen
            if silent > self.heartbeat_timeout_s:
                self.drop(worker, f"no heartbeat for {silent:.0f} s")

    def send(self, worker: WorkerInfo, message, frames: list = (), track: bool = False) -> bool:
        """Send to one worker; a worker whose connection is gone is dropped (returns False)."""
        try:
            self.endpoint.send(worker.identity, message, frames, track=track)
            return True
        except zmq.ZMQError as err:  # ROUTER_MANDATORY: the peer's connection is gone
            self.drop(worker, f"its connection is gone ({err})")
            return False

    def record_ack(self, identity: bytes, ack: WeightsLoaded) -> None:
        if identity in self.workers:
            self.workers[identity].version = ack.version
        if self.last_sync is not None and ack.version == self.last_sync.version:
            self.last_sync.acked[ack.worker_id] = time.perf_counter() - self.last_sync.started
            self.last_sync.load_seconds[ack.worker_id] = ack.load_seconds

    def wait_for_any_worker(self) -> None:
        """With no worker left, wait (visibly) for one to join, up to no_workers_wait_s."""
        log.warning(
            "every rollout worker is gone; waiting up to %.0f s for one to join: rl rollout --connect %s",
            self.no_workers_wait_s, self.endpoint.address,
        )
        deadline = time.monotonic() + self.no_workers_wait_s
        while not self.workers:
            if time.monotonic() > deadline:
                raise NoWorkersLeft(
                    f"every rollout worker is gone and none joined within {self.no_workers_wait_s:.0f} s "
                    f"(lost: {'; '.join(f'worker {k}: {v}' for k, v in self.lost.items())})"
                )
            self.pump(timeout_ms=500)

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
                if worker.identity in self.workers:
                    self.send(worker, message, frames, track=True)

    def wait_for_acks(self, version: int, timeout_s: float) -> None:
        """Until every live worker holds `version`; silent workers are dropped meanwhile."""
        deadline = time.monotonic() + timeout_s
        while any(w.version < version for w in self.workers.values()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers did not confirm weights version {version} within {timeout_s:.0f} s")
            self.pump(timeout_ms=200)
            self.check_liveness()

    # ------------------------------------------------------------ tasks

    def run_tasks(
        self, tasks: list[Task], sampling: SamplingParams, purpose: str, min_version: int, timeout_s: float = 3600
    ) -> list[Trajectory]:
        """Split `tasks` across the workers, wait for every sample, return them in task order.

        A chunk's sampling seed depends on its position in `tasks`, not on the worker, so the
        samples are the same however the work is split or re-sent. If a worker is lost, its
        unfinished chunks go to the others under new request ids; a late answer to an old id is
        ignored, so no sample is ever returned twice.
        """
        if not self.workers:
            self.wait_for_any_worker()
        active: dict[int, Request] = {}  # request id -> unanswered request
        positions, start = 0, 0
        for position, chunk in enumerate(split_evenly(tasks, len(self.workers))):
            if chunk:
                seeded = sampling if sampling.seed is None else sampling.model_copy(update={"seed": sampling.seed + start * sampling.n})
                self._send_request(Request(chunk, seeded, position, b""), purpose, min_version, active)
                positions += 1
            start += len(chunk)
        results: dict[int, list[Trajectory]] = {}  # chunk position -> its samples
        deadline = time.monotonic() + timeout_s
        while len(results) < positions:
            if time.monotonic() > deadline:
                raise TimeoutError(f"rollout workers returned {len(results)} of {positions} requests in {timeout_s:.0f} s")
            received = self.pump(timeout_ms=500)
            if received is not None:
                identity, message, payload = received
                request = active.get(message.request_id) if isinstance(message, Samples) else None
                if request is not None and request.identity == identity:
                    problem = samples_problem(message, payload, self.vocab_size)
                    if problem:  # well-formed on the wire, unusable for training: the worker is not trusted again
                        self.drop(self.workers[identity], f"it sent unusable samples ({problem})")
                    else:
                        results[request.position] = unpack_samples(message, payload)
                        del active[message.request_id]
            self.check_liveness()
            for request_id, request in list(active.items()):
                if request.identity not in self.workers:  # its worker was lost: send the chunk elsewhere
                    del active[request_id]
                    self._send_request(request, purpose, min_version, active)
                    self.reassigned_requests += 1
        return [t for position in sorted(results) for t in results[position]]

    def _send_request(self, request: Request, purpose: str, min_version: int, active: dict[int, Request]) -> None:
        """Send a chunk to the least-loaded live worker and record it in `active`."""
        while True:
            if not self.workers:
                self.wait_for_any_worker()
            load = Counter(r.identity for r in active.values())
            identity = min(self.workers, key=lambda i: (load[i], self.workers[i].worker_id))
            request_id = next(self.next_request_id)
            message = Tasks(request_id=request_id, purpose=purpose, min_version=min_version, sampling=request.sampling, tasks=request.tasks)
            if self.send(self.workers[identity], message):
                active[request_id] = replace(request, identity=identity)
                return

    def drain_events(self) -> list[str]:
        events, self.lost_events = self.lost_events, []
        return events

    def shutdown(self, reason: str) -> None:
        for worker in list(self.workers.values()):
            try:
                self.endpoint.send(worker.identity, Shutdown(reason=reason))
            except zmq.ZMQError:
                pass


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


def samples_problem(message: Samples, payload: list[memoryview], vocab_size: int | None) -> str | None:
    """Why samples cannot be trained on (token ids outside the vocabulary, non-finite logprobs), or None."""
    for name, frame in (("prompt", payload[0]), ("completion", payload[1])):
        ids = np.frombuffer(frame, dtype=np.int32)
        if vocab_size is not None and ids.size and int(ids.max()) >= vocab_size:
            return f"{name} token id {int(ids.max())} >= vocabulary size {vocab_size}"
    if not np.isfinite(np.frombuffer(payload[2], dtype=np.float32)).all():
        return "non-finite logprobs"
    return None


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
