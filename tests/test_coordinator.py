"""The learner's coordinator with fake workers on real sockets: liveness, re-sending, no duplicates."""

import threading
import time

import numpy as np
import pytest
import zmq

from rl.coordinator import Coordinator, NoWorkersLeft
from rl.transport import LearnerEndpoint
from rl.wire import (
    Heartbeat,
    Hello,
    RolloutTimings,
    SampleMeta,
    Samples,
    SamplingParams,
    Task,
    Tasks,
    WeightsLoaded,
    Welcome,
    decode,
    encode,
)


def tasks(count):
    return [Task(task_id=f"t{i}", distribution="d", messages=[{"role": "user", "content": f"q{i}"}], answer="1") for i in range(count)]


class FakeWorker(threading.Thread):
    """Answers Tasks with one-token samples; `silent` stops answering and heartbeating (a frozen process)."""

    def __init__(self, address, name, answer_delay=0.0, start_delay=0.0, tamper=None):
        super().__init__(daemon=True)
        self.address, self.name, self.answer_delay, self.start_delay = address, name, answer_delay, start_delay
        self.tamper = tamper  # (header, frames, request) -> (header, frames): what a lying worker sends instead
        self.silent = threading.Event()
        self.stopped = threading.Event()
        self.requests: list[Tasks] = []
        self.worker_id = None

    def run(self):
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.address)
        sock.send_multipart(encode(Hello(worker_name=self.name, pid=0, host="test")))
        next_beat = 0.0
        while not self.stopped.is_set():
            if self.worker_id is not None and not self.silent.is_set() and time.monotonic() > next_beat:
                sock.send_multipart(encode(Heartbeat(worker_id=self.worker_id, version=0)))
                next_beat = time.monotonic() + 0.05
            if not sock.poll(20):
                continue
            message, _ = decode(sock.recv_multipart())
            if isinstance(message, Welcome):
                self.worker_id = message.worker_id
                time.sleep(self.start_delay)  # its engine starting
                sock.send_multipart(encode(WeightsLoaded(worker_id=self.worker_id, version=0, load_seconds=self.start_delay)))
            elif isinstance(message, Tasks) and not self.silent.is_set():
                self.requests.append(message)
                time.sleep(self.answer_delay)
                if self.silent.is_set():
                    continue
                metas = [
                    SampleMeta(sample_id=f"w{self.worker_id}-r{message.request_id}-t{t}-s{s}", task_id=task.task_id,
                               distribution=task.distribution, prompt_len=1, completion_len=1, reward=0.0, reward_components={},
                               finish_reason="stop", policy_version=0, worker_id=self.worker_id, text="x")
                    for t, task in enumerate(message.tasks) for s in range(message.sampling.n)
                ]
                frames = [np.ones(len(metas), np.int32), np.ones(len(metas), np.int32), np.zeros(len(metas), np.float32)]
                timings = RolloutTimings(generate_seconds=0.25, score_seconds=0.01, worker_seconds=0.3)
                header = Samples(request_id=message.request_id, purpose=message.purpose, worker_id=self.worker_id,
                                 samples=metas, timings=timings)
                if self.tamper is not None:
                    header, frames = self.tamper(header, frames, message)
                sock.send_multipart(encode(header, frames))
        sock.close()


@pytest.fixture
def coordinator():
    endpoint = LearnerEndpoint("127.0.0.1", 0)
    welcome = lambda wid: Welcome(worker_id=wid, model_path="m", rollout={}, reward_sets={}, seed=0, run_dir="r")
    coord = Coordinator(endpoint, welcome, lambda: (0, []), heartbeat_timeout_s=0.5, no_workers_wait_s=1.0)
    workers = []

    def start(name, **kwargs):
        worker = FakeWorker(endpoint.address, name, **kwargs)
        worker.start()
        workers.append(worker)
        return worker

    yield coord, start
    for worker in workers:
        worker.stopped.set()
        worker.join(timeout=2)
    endpoint.close()


SAMPLING = SamplingParams(n=2, temperature=1.0, top_p=1.0, max_tokens=4, seed=100)


def test_work_is_split_with_seeds_fixed_by_task_position(coordinator):
    coord, start = coordinator
    a, b = start("a"), start("b")
    coord.wait_for_workers(2, timeout_s=5)
    out = coord.run_tasks(tasks(5), SAMPLING, "train", min_version=0)
    assert [t.meta.task_id for t in out] == [f"t{i}" for i in range(5) for _ in range(2)]
    seeds = sorted(r.sampling.seed for w in (a, b) for r in w.requests)
    assert seeds == [100, 100 + 3 * 2]  # chunks of 3 and 2 tasks: the second starts at task 3, n=2


def test_each_answers_timings_are_kept_with_its_job(coordinator):
    coord, start = coordinator
    start("a"), start("b")
    coord.wait_for_workers(2, timeout_s=5)
    job = coord.submit(tasks(4), SAMPLING, "train", min_version=0)
    coord.collect(job)
    assert sorted(job.timings) == [0, 1] and job.generate_seconds == pytest.approx(0.5)


def test_a_silent_worker_is_dropped_and_its_tasks_go_elsewhere_without_duplicates(coordinator):
    coord, start = coordinator
    healthy, frozen = start("healthy"), start("frozen", answer_delay=0.3)
    coord.wait_for_workers(2, timeout_s=5)
    frozen.silent.set()  # stops heartbeats and will never answer its request
    out = coord.run_tasks(tasks(6), SAMPLING, "train", min_version=0)
    assert sorted(t.meta.task_id for t in out) == sorted(f"t{i}" for i in range(6) for _ in range(2))
    assert len({t.meta.sample_id for t in out}) == len(out) == 12
    # moved once: re-sent when the frozen worker was dropped, or earlier as a backup copy
    assert coord.reassigned_requests + coord.backup_requests == 1
    assert list(coord.lost.values())[0].startswith("no heartbeat")
    assert [w.name for w in coord.workers.values()] == ["healthy"]
    assert any("lost" in event for event in coord.drain_events())
    # the re-sent chunk kept its seed: samples do not depend on which worker made them
    assert sorted(r.sampling.seed for r in healthy.requests) == [100, 106]


def test_the_first_step_waits_for_every_engine_and_is_split_among_all(coordinator):
    coord, start = coordinator
    quick, slow = start("quick"), start("slow", start_delay=0.4)
    started = time.monotonic()
    coord.wait_for_workers(2, timeout_s=5)
    assert time.monotonic() - started > 0.35  # waited for the slow worker's engine, not just its hello
    coord.run_tasks(tasks(4), SAMPLING, "train", min_version=0)
    assert [len(r.tasks) for r in quick.requests] == [2] and [len(r.tasks) for r in slow.requests] == [2]


def test_no_task_goes_to_a_worker_whose_engine_is_still_starting(coordinator):
    coord, start = coordinator
    coord.heartbeat_timeout_s = 30  # the fake worker cannot heartbeat while its engine "starts"
    quick, slow = start("quick"), start("slow", start_delay=2.0)
    deadline = time.monotonic() + 5
    while len(coord.workers) < 2 and time.monotonic() < deadline:  # both have said hello
        coord.pump(timeout_ms=100)
    coord.wait_for_workers(1, timeout_s=5)
    started = time.monotonic()
    out = coord.run_tasks(tasks(4), SAMPLING, "train", min_version=0)
    assert time.monotonic() - started < 0.8  # neither waited for the slow start nor for a backup copy
    assert [len(r.tasks) for r in quick.requests] == [4] and {t.meta.worker_id for t in out} == {quick.worker_id}


def test_with_every_worker_gone_the_coordinator_waits_then_gives_up(coordinator):
    coord, start = coordinator
    worker = start("only")
    coord.wait_for_workers(1, timeout_s=5)
    worker.silent.set()
    started = time.monotonic()
    with pytest.raises(NoWorkersLeft, match="none joined within 1 s"):
        coord.run_tasks(tasks(2), SAMPLING, "train", min_version=0)
    assert 0.5 < time.monotonic() - started < 10


def test_a_worker_that_joins_while_others_are_gone_takes_over(coordinator):
    coord, start = coordinator
    first = start("first")
    coord.wait_for_workers(1, timeout_s=5)
    first.silent.set()
    threading.Timer(0.8, lambda: start("second")).start()
    coord.no_workers_wait_s = 10
    out = coord.run_tasks(tasks(3), SAMPLING, "train", min_version=0)
    assert len(out) == 6 and {t.meta.worker_id for t in out} == {1}


def test_samples_with_token_ids_outside_the_vocabulary_or_nan_logprobs_are_refused():
    from rl.replies import value_problem

    frames = lambda prompt, completion, logprobs: [memoryview(np.asarray(a, dtype)) for a, dtype in
                                                   ((prompt, np.int32), (completion, np.int32), (logprobs, np.float32))]
    assert value_problem(frames([1, 2], [3, 99], [0.0, -1.0]), vocab_size=100) is None
    problem = value_problem(frames([1, 2], [3, 100], [0.0, -1.0]), 100)
    assert problem.reason == "token_range" and "token id 100 >= vocabulary size 100" in problem.detail
    assert value_problem(frames([1, 2], [3, 4], [float("nan"), -1.0]), 100).reason == "non_finite_logprobs"


def test_a_straggler_chunk_is_copied_to_an_idle_worker_and_the_first_answer_wins(coordinator):
    coord, start = coordinator
    fast, slow = start("fast"), start("slow", answer_delay=3.0)
    coord.heartbeat_timeout_s = 30  # the fake worker cannot heartbeat while it sleeps; slow is not dead
    coord.wait_for_workers(2, timeout_s=5)
    started = time.monotonic()
    out = coord.run_tasks(tasks(4), SAMPLING, "train", min_version=0)
    assert time.monotonic() - started < 2.0  # did not wait for the slow worker's 3 s
    assert coord.backup_requests == 1 and coord.reassigned_requests == 0
    assert [t.meta.task_id for t in out] == [f"t{i}" for i in range(4) for _ in range(2)]
    assert {t.meta.worker_id for t in out} == {fast.worker_id}
    # the copy carried the straggler's seed, so the samples are the ones the slow worker would have made
    assert sorted(r.sampling.seed for r in fast.requests) == [100, 104] and [r.sampling.seed for r in slow.requests] == [104]
    # the slow worker's late answer is ignored and it is not given new work while still busy
    out = coord.run_tasks(tasks(2), SAMPLING, "train", min_version=0)
    assert len(out) == 4 and len({t.meta.sample_id for t in out}) == 4


def test_submit_returns_at_once_and_answers_that_arrive_meanwhile_are_kept(coordinator):
    coord, start = coordinator
    start("a", answer_delay=0.3)
    coord.wait_for_workers(1, timeout_s=5)
    started = time.monotonic()
    job = coord.submit(tasks(2), SAMPLING, "train", min_version=0)
    assert time.monotonic() - started < 0.2 and not job.done
    coord.wait_for_acks(0, timeout_s=1)  # other traffic is handled while the job is out: its answer is filed
    deadline = time.monotonic() + 5
    while not job.done and time.monotonic() < deadline:
        coord.pump(timeout_ms=100)
    assert job.done
    assert [t.meta.task_id for t in coord.collect(job)] == ["t0", "t0", "t1", "t1"]


def test_a_worker_that_says_goodbye_is_logged_as_left_and_its_work_moves_at_once(coordinator):
    from rl.wire import WorkerFailed

    coord, start = coordinator
    start("stays")
    leaver = zmq.Context.instance().socket(zmq.DEALER)
    leaver.setsockopt(zmq.LINGER, 0)
    leaver.connect(coord.endpoint.address)
    leaver.send_multipart(encode(Hello(worker_name="leaver", pid=0, host="elsewhere")))
    deadline = time.monotonic() + 5
    while len(coord.workers) < 2 and time.monotonic() < deadline:
        coord.pump(timeout_ms=100)
    welcome, _ = decode(leaver.recv_multipart())
    leaver.send_multipart(encode(WeightsLoaded(worker_id=welcome.worker_id, version=0, load_seconds=0.0)))  # engine up
    coord.wait_for_workers(2, timeout_s=5)
    leaver.send_multipart(encode(WorkerFailed(worker_id=welcome.worker_id, error="left: it was stopped (Ctrl-C or SIGTERM)")))
    deadline = time.monotonic() + 5
    while len(coord.workers) == 2 and time.monotonic() < deadline:
        coord.pump(timeout_ms=100)
    leaver.close()
    events = coord.drain_events()
    assert events == [f"rollout worker {welcome.worker_id} (leaver) left: it was stopped (Ctrl-C or SIGTERM); 1 remain"]
    assert len(coord.run_tasks(tasks(2), SAMPLING, "train", min_version=0)) == 4


@pytest.mark.parametrize("kind", ["group_of_one", "unknown_task", "future_version", "duplicate_ids", "too_long"])
def test_a_worker_whose_reply_is_wrong_is_dropped_counted_and_its_work_goes_elsewhere(coordinator, kind):
    from tests.tampering import EXPECTED_REASON, tamper

    coord, start = coordinator
    healthy = start("healthy")
    liar = start("liar", tamper=lambda header, frames, request: tamper(kind, header, frames, request))
    coord.wait_for_workers(2, timeout_s=5)
    out = coord.run_tasks(tasks(4), SAMPLING, "train", min_version=0)
    assert [t.meta.task_id for t in out] == [f"t{i}" for i in range(4) for _ in range(2)]
    assert {t.meta.worker_id for t in out} == {healthy.worker_id}
    assert coord.rejected == {EXPECTED_REASON[kind]: 1}
    assert coord.lost[liar.worker_id].startswith(f"it sent an invalid reply ({EXPECTED_REASON[kind]}: ")
    assert coord.reassigned_requests == 1 and [w.name for w in coord.workers.values()] == ["healthy"]


def test_an_answer_to_a_request_never_sent_is_refused(coordinator):
    coord, start = coordinator
    start("healthy")
    start("liar", tamper=lambda header, frames, request: (header.model_copy(update={"request_id": 10_000}), frames))
    coord.wait_for_workers(2, timeout_s=5)
    assert len(coord.run_tasks(tasks(4), SAMPLING, "train", min_version=0)) == 8
    assert coord.rejected == {"unknown_request": 1} and len(coord.lost) == 1


def test_a_dropped_workers_request_of_another_job_is_sent_again_when_that_job_is_collected(coordinator):
    """As when a worker is dropped during an evaluation while the next step's prompts are out (rollout.async)."""
    from tests.tampering import tamper

    coord, start = coordinator
    healthy = start("healthy")
    start("liar", tamper=lambda header, frames, request: tamper("unknown_task", header, frames, request), answer_delay=0.2)
    coord.wait_for_workers(2, timeout_s=5)
    first = coord.submit(tasks(2), SAMPLING, "train", min_version=0)
    second = coord.submit(tasks(4), SAMPLING, "train", min_version=0)
    assert len(coord.collect(first, timeout_s=10)) == 4
    out = coord.collect(second, timeout_s=10)
    assert [t.meta.task_id for t in out] == [f"t{i}" for i in range(4) for _ in range(2)]
    assert {t.meta.worker_id for t in out} == {healthy.worker_id}
