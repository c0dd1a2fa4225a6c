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
from dataclasses import dataclass, field

import numpy as np
import zmq

from rl.replies import Rejection, SentRequest, reply_problem
from rl.transport import LearnerEndpoint
from rl.wire import (
    Heartbeat,
    Hello,
    RolloutTimings,
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
    engine_ready: bool = False  # it said its engine is up (its first WeightsLoaded); no task goes to it before
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
class Chunk:
    """Consecutive tasks of a job, sent to one worker as one request."""

    position: int  # order among the job's chunks
    tasks: list[Task]
    sampling: SamplingParams
    prompt_ids: list[np.ndarray] | None = None  # each task's prompt as the workers must render it (None: not known)


@dataclass
class RolloutJob:
    """Tasks handed to the workers by one submit(); collect() waits for all of them."""

    purpose: str
    min_version: int
    chunks: list[Chunk] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)  # chunk positions not (or no longer) at any worker
    results: dict[int, list[Trajectory]] = field(default_factory=dict)  # chunk position -> its samples
    durations: list[float] = field(default_factory=list)  # seconds each answered chunk took
    timings: dict[int, RolloutTimings] = field(default_factory=dict)  # chunk position -> its worker's account

    @property
    def generate_seconds(self) -> float:
        """Seconds the answering workers' engines spent generating, summed over chunks (0 if none said)."""
        return sum(t.generate_seconds for t in self.timings.values())

    @property
    def done(self) -> bool:
        return len(self.results) == len(self.chunks)

    def trajectories(self) -> list[Trajectory]:
        return [t for position in sorted(self.results) for t in self.results[position]]


@dataclass
class InFlight:
    """A request the learner still wants an answer to."""

    job: RolloutJob
    position: int
    identity: bytes
    sent_at: float


BACKUP_MIN_SECONDS = 1.0  # never copy a chunk sooner: jitter between equal workers is not straggling


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
        backup_after: float | None = 1.5,
        publish_on_join: bool = True,
        render_prompts: Callable[[list[Task]], list[list[int]]] | None = None,
    ):
        """`render_prompts`: the token ids of tasks' prompts, as the workers render them (rl.prompts.render_prompts with the
        model's tokenizer), to check replies against; None: a reply's prompts need only agree within each task."""
        self.endpoint = endpoint
        self.make_welcome = make_welcome
        self.current_weights = current_weights
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.no_workers_wait_s = no_workers_wait_s
        self.vocab_size = vocab_size
        self.render_prompts = render_prompts
        self.backup_after = backup_after  # None: never send backup copies of a straggler's chunk
        # False when a publication is collective (several learner ranks): joiners then get the next one
        self.publish_on_join = publish_on_join
        self.inflight: dict[int, InFlight] = {}  # request id -> a request whose answer is wanted
        self.outstanding: dict[int, InFlight] = {}  # request id -> the request, until its worker answers (busy)
        self.rejected: Counter[str] = Counter()  # replies refused, by reason (rl.replies.REASONS)
        self.published_version = 0  # the newest policy version sent to any worker: no sample can be newer
        self.backup_requests = 0
        self.workers: dict[bytes, WorkerInfo] = {}
        self.lost: dict[int, str] = {}  # worker id -> why it was dropped
        self.next_worker_id = itertools.count()
        self.next_request_id = itertools.count()
        self.last_sync: SyncStats | None = None
        self.reassigned_requests = 0
        self.lost_events: list[str] = []  # drained into the step's metrics and log

    # ------------------------------------------------------------ membership

    def wait_for_workers(self, count: int, timeout_s: float) -> None:
        """Until `count` workers have their engines up, so that the first step is split among all of them and
        its rollout time is generation, not engine start-up."""
        deadline = time.monotonic() + timeout_s
        while (started := sum(w.engine_ready for w in self.workers.values())) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {started} of {count} rollout workers connected to {self.endpoint.address} and started their "
                    f"engines within {timeout_s:.0f} s ({len(self.workers)} connected)"
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
            left = message.error.startswith("left: ")  # rollout.worker.LEFT_PREFIX: a goodbye
            self.drop(worker, message.error.removeprefix("left: ") if left else f"it reported a failure: {message.error}", left=left)
            return None
        if isinstance(message, Samples):
            self.handle_samples(identity, message, payload)
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
        if version == 0:
            worker.version = 0  # it loads version 0 from disk
        elif self.publish_on_join:
            self.send_weights(version, buckets, [worker])
        log.info("rollout worker %d joined (%s from %s); %d connected%s", worker.worker_id, hello.worker_name, hello.host,
                 len(self.workers), "" if worker.version >= 0 or self.publish_on_join else "; it gets weights at the next step")

    def drop(self, worker: WorkerInfo, reason: str, left: bool = False) -> None:
        """Forget a worker (dead, silent, failed, or gone on its own); its unfinished requests are re-sent by collect()."""
        if self.workers.pop(worker.identity, None) is None:
            return
        for request_id, request in list(self.outstanding.items()):
            if request.identity == worker.identity:
                del self.outstanding[request_id]
        self.lost[worker.worker_id] = reason
        message = f"rollout worker {worker.worker_id} ({worker.name}) {'left' if left else 'lost'}: {reason}; {len(self.workers)} remain"
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
        """Version 0 is a worker's word that its engine is up with the weights from disk (sent once, first);
        a publication's ack is the version it now holds."""
        worker = self.workers.get(identity)
        if worker is not None:
            if not worker.engine_ready:
                log.info("rollout worker %d (%s) started its engine in %.1f s", worker.worker_id, worker.name, ack.load_seconds)
            worker.engine_ready = True
            if ack.version > 0:  # a worker waiting for a publication (worker.version -1) does not hold version 0
                worker.version = ack.version
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
        self.last_sync = SyncStats(version, time.perf_counter() - started, started)
        return self.last_sync

    def send_weights(self, version: int, buckets: Buckets, workers: list[WorkerInfo]) -> None:
        """Send bucket by bucket; at most two buckets are alive at once (the one on the wire and the next).

        `buckets` must know its length (the bucket count goes in every header) and may be a lazy
        sequence that gathers each bucket only when asked (ZeRO-3), so no full copy is ever built.
        """
        num_buckets = len(buckets)
        self.published_version = max(self.published_version, version)
        for index, bucket in enumerate(buckets):
            metas = [TensorMeta(name=name, dtype=str(t.dtype).removeprefix("torch."), shape=list(t.shape)) for name, t in bucket]
            frames = [tensor_bytes(t) for _, t in bucket]
            message = Weights(version=version, bucket=index, num_buckets=num_buckets, tensors=metas)
            previous = self.endpoint.take_trackers()
            for worker in workers:
                if worker.identity in self.workers:
                    self.send(worker, message, frames, track=True)
            self.endpoint.wait_trackers(previous)  # the bucket before this one may now be freed
        self.endpoint.wait_sent()

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
        """Send `tasks` to the workers, wait for every sample, return them in task order."""
        return self.collect(self.submit(tasks, sampling, purpose, min_version), timeout_s)

    def submit(self, tasks: list[Task], sampling: SamplingParams, purpose: str, min_version: int) -> RolloutJob:
        """Split `tasks` into one chunk per worker and send them; returns at once (collect() waits).

        A chunk's sampling seed depends on its position in `tasks`, not on the worker, so the
        samples are the same however the work is split, re-sent or duplicated.
        """
        if not self.workers:
            self.wait_for_any_worker()
        job = RolloutJob(purpose=purpose, min_version=min_version)
        start = 0
        for chunk in split_evenly(tasks, max(1, len(self.ready_workers()))):
            if chunk:
                seeded = sampling if sampling.seed is None else sampling.model_copy(update={"seed": sampling.seed + start * sampling.n})
                prompts = None if self.render_prompts is None else [np.asarray(p, np.int32) for p in self.render_prompts(chunk)]
                job.chunks.append(Chunk(len(job.chunks), chunk, seeded, prompts))
            start += len(chunk)
        job.pending = list(range(len(job.chunks)))
        self.dispatch(job)
        return job

    def collect(self, job: RolloutJob, timeout_s: float = 3600) -> list[Trajectory]:
        """Wait until every chunk of `job` has an answer; lost workers' chunks go elsewhere.

        A straggler does not hold the step back: once a worker is idle and a chunk has run for
        `backup_after` times the median time of the job's finished chunks, an identical copy (same
        seed) goes to the idle worker and whichever answer comes first is used (a backup request,
        as in MapReduce). A late answer to a request no longer wanted is ignored, so no sample is
        ever returned twice.
        """
        deadline = time.monotonic() + timeout_s
        while not job.done:
            if time.monotonic() > deadline:
                raise TimeoutError(f"rollout workers returned {len(job.results)} of {len(job.chunks)} requests in {timeout_s:.0f} s")
            self.pump(timeout_ms=200)
            self.check_liveness()
            for request_id, request in list(self.inflight.items()):
                if request.identity not in self.workers:  # its worker was lost: send the chunk elsewhere
                    del self.inflight[request_id]  # (another job's chunk, e.g. the next step's, goes when that job is collected)
                    if not self.copies_in_flight(request.job, request.position):
                        request.job.pending.append(request.position)
                        self.reassigned_requests += 1
            self.dispatch(job)
            self.send_backups(job)
        return job.trajectories()

    def ready_workers(self) -> list[WorkerInfo]:
        """Workers whose engine is up and that hold weights (one that joined mid-run may wait for the next publication)."""
        return [w for w in self.workers.values() if w.engine_ready and w.version >= 0]

    def load(self, identity: bytes) -> int:
        return sum(1 for request in self.outstanding.values() if request.identity == identity)

    def copies_in_flight(self, job: RolloutJob, position: int) -> int:
        return sum(1 for r in self.inflight.values() if r.job is job and r.position == position)

    def dispatch(self, job: RolloutJob) -> None:
        """Send the job's pending chunks, each to the least-loaded ready worker."""
        while job.pending:
            ready = self.ready_workers()
            if not ready:
                if not self.workers:
                    self.wait_for_any_worker()
                return  # joined workers get weights at the next publication; try again then
            worker = min(ready, key=lambda w: (self.load(w.identity), w.worker_id))
            if self.send_chunk(job, job.pending[0], worker):
                job.pending.pop(0)

    def send_chunk(self, job: RolloutJob, position: int, worker: WorkerInfo) -> bool:
        chunk = job.chunks[position]
        request_id = next(self.next_request_id)
        message = Tasks(request_id=request_id, purpose=job.purpose, min_version=job.min_version, sampling=chunk.sampling, tasks=chunk.tasks)
        if not self.send(worker, message):
            return False
        request = InFlight(job, position, worker.identity, time.monotonic())
        self.inflight[request_id] = self.outstanding[request_id] = request
        return True

    def send_backups(self, job: RolloutJob) -> None:
        if not job.durations or self.backup_after is None:
            return
        idle = [w for w in self.ready_workers() if self.load(w.identity) == 0]
        if not idle:
            return
        patience = max(BACKUP_MIN_SECONDS, self.backup_after * float(np.median(job.durations)))
        now = time.monotonic()
        for request in list(self.inflight.values()):
            if not idle:
                return
            straggling = request.job is job and now - request.sent_at > patience
            if straggling and self.copies_in_flight(job, request.position) == 1 and self.send_chunk(job, request.position, idle.pop(0)):
                self.backup_requests += 1

    def handle_samples(self, identity: bytes, message: Samples, payload: list) -> None:
        """Check an answer against its request, then file it under its job; answers nobody waits for any more
        (superseded, late) are checked too, then dropped. A worker whose answer fails is not trusted again."""
        worker = self.workers[identity]
        sent = self.outstanding.get(message.request_id)
        if sent is None or sent.identity != identity:
            self.reject(worker, Rejection("unknown_request", f"request {message.request_id} is not one it has to answer"))
            return
        del self.outstanding[message.request_id]
        try:
            problem = reply_problem(message, payload, self.sent_request(sent, message.request_id, worker), self.published_version,
                                    self.vocab_size)
        except Exception as err:  # noqa: BLE001 - a bug in a check must not stop the run: the reply is refused
            log.exception("checking a reply of worker %d failed", worker.worker_id)
            problem = Rejection("check_failed", f"{type(err).__name__} while checking it")
        request = self.inflight.pop(message.request_id, None)  # None: a copy of this chunk answered first
        if problem:
            self.reject(worker, problem)
            if request is not None and not self.copies_in_flight(request.job, request.position):
                request.job.pending.append(request.position)
                self.reassigned_requests += 1
            return
        if request is None:
            return
        job = request.job
        job.results[request.position] = unpack_samples(message, payload)
        if message.timings is not None:
            job.timings[request.position] = message.timings
        job.durations.append(time.monotonic() - request.sent_at)
        for other_id, other in list(self.inflight.items()):  # the copy still running is no longer wanted
            if other.job is job and other.position == request.position:
                del self.inflight[other_id]

    def sent_request(self, request: InFlight, request_id: int, worker: WorkerInfo) -> SentRequest:
        chunk = request.job.chunks[request.position]
        return SentRequest(request_id, worker.worker_id, request.job.purpose, chunk.tasks, chunk.sampling,
                           request.job.min_version, chunk.prompt_ids)

    def reject(self, worker: WorkerInfo, rejection: Rejection) -> None:
        """Count a refused reply by its reason and drop its worker (its work is re-sent by collect())."""
        self.rejected[rejection.reason] += 1
        self.drop(worker, f"it sent an invalid reply ({rejection.reason}: {rejection.detail})")

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
