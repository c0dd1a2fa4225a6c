"""Is a worker's reply what it was asked for? And how big may a reply be?

`decode` (rl/wire.py) only knows that a Samples message is well formed. Here each reply is
checked against the Tasks request it answers, before any of it is used: the same worker, the
request's task ids, exactly `sampling.n` samples per task, in the request's order, with the sample
ids the learner expects (groups are rebuilt from them) and the task's distribution (the
curriculum's arm), each task's own prompt token ids, no completion longer than `max_tokens`, a
policy version the worker can hold (not older than the request's `min_version`, not newer than
the newest one published), token ids inside the vocabulary and finite logprobs. Token, logprob
and length fields agree already: `decode` checked each frame's size against the header's lengths.

A reply that fails is a `Rejection` with a short fixed `reason` (one of REASONS, never text from
the message), counted as `wire/rejected/<reason>`; the coordinator drops the worker and re-sends
its work.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from rl.config import Config
from rl.wire import MAX_HEADER_BYTES, Samples, SamplingParams, Task, _short, sample_id

REASONS = (
    "unknown_request",  # a request id that was never sent to this worker, or is answered already
    "wrong_request",  # the reply's purpose or worker id is not the request's
    "unknown_task",  # a task id that is not in the request
    "duplicate_sample_id",
    "sample_count",  # a task with other than sampling.n samples (a group of one, a missing or an extra sample)
    "sample_id",  # a sample id or order other than the learner's: groups would be rebuilt wrongly
    "distribution",  # a sample's distribution is not its task's (the curriculum would be fed a made-up arm)
    "prompt_ids",  # a prompt that is not the task's
    "too_long",  # a completion longer than the request's max_tokens
    "policy_version",  # newer than the newest published, older than the request's min_version, or mixed
    "token_range",  # a token id outside the vocabulary
    "non_finite_logprobs",
    "check_failed",  # the check itself raised (a bug): the reply is refused rather than the run stopped
)

DYNAMIC_SAMPLING_MAX_FACTOR = 4  # one round of dynamic sampling asks for at most this many x prompts_per_step prompts
BYTES_PER_VALUE = 4  # int32 token ids, float32 logprobs


@dataclass(frozen=True)
class Rejection:
    reason: str  # one of REASONS
    detail: str  # for the log; values taken from the message are cut short


@dataclass(frozen=True)
class SentRequest:
    """What the learner asked one worker, as the check needs it."""

    request_id: int
    worker_id: int
    purpose: str
    tasks: list[Task]
    sampling: SamplingParams
    min_version: int
    prompt_ids: list[np.ndarray] | None = None  # each task's rendered prompt; None: only checked to agree within a task


def reply_problem(reply: Samples, payload: list[memoryview], sent: SentRequest, newest_version: int,
                  vocab_size: int | None) -> Rejection | None:
    """Why `reply` (a decoded Samples message and its frames) is not an answer to `sent`, or None."""
    return (
        request_problem(reply, sent)
        or layout_problem(reply, sent)
        or token_problem(reply, payload, sent)
        or version_problem(reply, sent, newest_version)
        or value_problem(payload, vocab_size)
    )


def request_problem(reply: Samples, sent: SentRequest) -> Rejection | None:
    if reply.purpose != sent.purpose:
        return Rejection("wrong_request", f"a {reply.purpose} reply to a {sent.purpose} request")
    strangers = {s.worker_id for s in reply.samples} - {sent.worker_id}
    if reply.worker_id != sent.worker_id or strangers:
        return Rejection("wrong_request", f"worker ids {sorted({reply.worker_id, *strangers})[:4]} for worker {sent.worker_id}")
    return None


def layout_problem(reply: Samples, sent: SentRequest) -> Rejection | None:
    """Task ids, counts, sample ids and order: sample k*n + s is sample s of task k, as the worker numbers them."""
    n, samples = sent.sampling.n, reply.samples
    asked = Counter(task.task_id for task in sent.tasks)
    unknown = next((s.task_id for s in samples if s.task_id not in asked), None)
    if unknown is not None:
        return Rejection("unknown_task", f"task id {_short(unknown)} is not in request {sent.request_id}")
    ids = [s.sample_id for s in samples]
    if len(set(ids)) != len(ids):
        twice = next(i for i, count in Counter(ids).items() if count > 1)
        return Rejection("duplicate_sample_id", f"sample id {_short(twice)} appears more than once")
    given = Counter(s.task_id for s in samples)
    for task_id, tasks in asked.items():
        if given[task_id] != tasks * n:
            return Rejection("sample_count", f"task {_short(task_id)} has {given[task_id]} samples, asked for {tasks * n}")
    for index, meta in enumerate(samples):
        task_index, sample_index = divmod(index, n)
        expected = sample_id(sent.worker_id, sent.request_id, task_index, sample_index)
        if meta.sample_id != expected or meta.task_id != sent.tasks[task_index].task_id:
            return Rejection("sample_id", f"sample {index} is {_short(meta.sample_id)} of task {_short(meta.task_id)}, expected "
                                          f"{expected} of task {_short(sent.tasks[task_index].task_id)}")
        if meta.distribution != sent.tasks[task_index].distribution:
            return Rejection("distribution", f"sample {expected} says distribution {_short(meta.distribution)}, its task's is "
                                             f"{_short(sent.tasks[task_index].distribution)}")
    return None


def token_problem(reply: Samples, payload: list[memoryview], sent: SentRequest) -> Rejection | None:
    """Each sample's prompt is its task's prompt; no completion is longer than asked. (The layout is checked already.)"""
    n, max_tokens = sent.sampling.n, sent.sampling.max_tokens
    prompts = np.frombuffer(payload[0], dtype=np.int32)
    start, first_of_task = 0, None
    for index, meta in enumerate(reply.samples):
        if meta.completion_len > max_tokens:
            return Rejection("too_long", f"sample {_short(meta.sample_id)} has {meta.completion_len} completion tokens, "
                                         f"max_tokens is {max_tokens}")
        prompt = prompts[start:start + meta.prompt_len]
        start += meta.prompt_len
        task_index, sample_index = divmod(index, n)
        if sample_index == 0:
            first_of_task = prompt
        expected = sent.prompt_ids[task_index] if sent.prompt_ids is not None else first_of_task
        if not np.array_equal(prompt, expected):
            return Rejection("prompt_ids", f"sample {_short(meta.sample_id)}: its {meta.prompt_len} prompt token ids are not "
                                           f"the {len(expected)} of task {_short(meta.task_id)}")
    return None


def version_problem(reply: Samples, sent: SentRequest, newest_version: int) -> Rejection | None:
    versions = {s.policy_version for s in reply.samples}
    if len(versions) > 1:
        return Rejection("policy_version", f"samples of policy versions {sorted(versions)[:4]} in one reply")
    for version in versions:
        if version > newest_version:
            return Rejection("policy_version", f"policy version {version} is newer than the newest published, {newest_version}")
        if version < sent.min_version:
            return Rejection("policy_version", f"policy version {version} is older than the request's {sent.min_version}")
    return None


def value_problem(payload: list[memoryview], vocab_size: int | None) -> Rejection | None:
    """Token ids outside the vocabulary, non-finite logprobs."""
    for name, frame in (("prompt", payload[0]), ("completion", payload[1])):
        ids = np.frombuffer(frame, dtype=np.int32)
        if vocab_size is not None and ids.size and int(ids.max()) >= vocab_size:
            return Rejection("token_range", f"{name} token id {int(ids.max())} >= vocabulary size {vocab_size}")
    if not np.isfinite(np.frombuffer(payload[2], dtype=np.float32)).all():
        return Rejection("non_finite_logprobs", "non-finite logprobs")
    return None


# ---------------------------------------------------------------- how big a reply may be


@dataclass(frozen=True)
class ReceiveLimits:
    """The learner socket's ZeroMQ limits. A peer that sends a larger frame is disconnected by ZeroMQ."""

    max_message_bytes: int  # zmq.MAXMSGSIZE (ZeroMQ applies it to each frame of a message)
    receive_hwm: int  # zmq.RCVHWM: messages queued per connection; past it ZeroMQ stops reading that connection


def learner_receive_limits(samples_per_message: int, tokens_per_sample: int, replies_per_connection: int,
                           margin: int = 2) -> ReceiveLimits:
    """What workers legitimately send, times `margin`. Workers send samples, never weights.

    A Samples frame is the header (at most MAX_HEADER_BYTES: a worker's `encode` refuses a larger one)
    or an array of one int32/float32 per token of every sample. Per connection a worker has at most
    its outstanding replies and two control messages (WeightsLoaded, WorkerFailed) queued; the
    heartbeat connection only heartbeats, which are worthless once old. Reaching the high-water mark
    never loses a message: ZeroMQ stops reading that connection until the learner catches up.
    """
    if min(samples_per_message, tokens_per_sample, replies_per_connection, margin) < 1:
        raise ValueError("samples_per_message, tokens_per_sample, replies_per_connection and margin must be >= 1")
    largest_frame = max(MAX_HEADER_BYTES, samples_per_message * tokens_per_sample * BYTES_PER_VALUE)
    return ReceiveLimits(max_message_bytes=margin * largest_frame, receive_hwm=margin * (replies_per_connection + 2))


def receive_limits(config: Config, held_out_tasks: int = 0) -> ReceiveLimits:
    """The limits for a run of `config` whose held-out split has `held_out_tasks` tasks.

    One reply answers one chunk of a job, and a chunk can be a whole job (a single worker): a step's
    prompts (up to DYNAMIC_SAMPLING_MAX_FACTOR times that per dynamic-sampling round) or the
    held-out split. Replies per connection: one per job in flight (the step's, the next step's
    with rollout.async, an evaluation's), per chunk a worker may hold after re-sends (up to one per
    worker).
    """
    r, e = config.rollout, config.eval
    rounds = DYNAMIC_SAMPLING_MAX_FACTOR if config.train.dynamic_sampling else 1
    training = r.prompts_per_step * rounds * r.samples_per_prompt
    evaluating = held_out_tasks * e.samples if (e.before or e.after or e.every) else 0
    jobs = 1 + int(r.async_) + int(bool(e.every))
    return learner_receive_limits(
        samples_per_message=max(training, evaluating),
        tokens_per_sample=r.max_model_len,  # prompt + completion: either frame holds at most this many per sample
        replies_per_connection=jobs * max(1, r.num_workers),
    )
