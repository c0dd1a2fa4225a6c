"""Checking a worker's reply against its request (rl/replies.py), and the learner's receive limits."""

from collections import Counter

import numpy as np
import pytest

from rl.config import Config
from rl.replies import REASONS, SentRequest, learner_receive_limits, receive_limits, reply_problem
from rl.wire import MAX_HEADER_BYTES, SampleMeta, Samples, SamplingParams, Task, Tasks, decode, encode, sample_id
from tests.tampering import EXPECTED_REASON, TAMPERINGS, Item, join, split, tamper

WORKER, REQUEST, N, MAX_TOKENS = 3, 7, 2, 6
PROMPTS = [[11, 12, 13], [21, 22]]
TASKS = [Task(task_id=f"t{i}", distribution="d", messages=[{"role": "user", "content": f"q{i}"}], answer="1") for i in range(2)]
SAMPLING = SamplingParams(n=N, temperature=1.0, top_p=1.0, max_tokens=MAX_TOKENS, seed=0)
REQUEST_MESSAGE = Tasks(request_id=REQUEST, purpose="train", min_version=1, sampling=SAMPLING, tasks=TASKS)


def sent(prompts=PROMPTS, min_version=1):
    return SentRequest(REQUEST, WORKER, "train", TASKS, SAMPLING, min_version,
                       None if prompts is None else [np.asarray(p, np.int32) for p in prompts])


def honest_reply(version=1):
    """What a real worker sends: task by task, n samples each, ids from rl.wire.sample_id."""
    metas, prompts, completions = [], [], []
    for t, task in enumerate(TASKS):
        for s in range(N):
            completion = list(range(30, 30 + 2 + t + s))
            metas.append(SampleMeta(sample_id=sample_id(WORKER, REQUEST, t, s), task_id=task.task_id, distribution="d",
                                    prompt_len=len(PROMPTS[t]), completion_len=len(completion), reward=float(s),
                                    reward_components={}, finish_reason="stop", policy_version=version, worker_id=WORKER,
                                    text="x"))
            prompts += PROMPTS[t]
            completions += completion
    frames = [np.asarray(prompts, np.int32), np.asarray(completions, np.int32), np.full(len(completions), -0.5, np.float32)]
    return Samples(request_id=REQUEST, purpose="train", worker_id=WORKER, samples=metas), frames


def check(header, frames, request=None, newest_version=2, vocab_size=100):
    """Through the real wire first: a tampered reply must still be well formed, or this test would prove nothing."""
    message, payload = decode([bytes(memoryview(f).cast("B")) if not isinstance(f, bytes) else f for f in encode(header, frames)])
    return reply_problem(message, payload, request or sent(), newest_version, vocab_size)


def test_an_honest_reply_passes_with_and_without_the_rendered_prompts():
    assert check(*honest_reply()) is None
    assert check(*honest_reply(), request=sent(prompts=None)) is None
    assert check(*honest_reply(version=2)) is None  # the newest published version is fine, so is the request's minimum


@pytest.mark.parametrize("kind", sorted(TAMPERINGS))
def test_each_tampered_reply_is_refused_with_its_reason(kind):
    problem = check(*tamper(kind, *honest_reply(), REQUEST_MESSAGE))
    assert problem is not None, f"{kind} was accepted"
    assert problem.reason == EXPECTED_REASON[kind], problem
    assert problem.reason in REASONS


def test_without_the_rendered_prompts_a_prompt_must_still_agree_within_its_task():
    header, frames = honest_reply()
    frames[0] = frames[0].copy()
    frames[0][3] = 99  # the second sample of task t0 has another prompt than the first
    assert check(header, frames, request=sent(prompts=None)).reason == "prompt_ids"
    # the wrong_prompt tampering changes all of a task's samples alike: only the rendered prompt catches it
    assert check(*tamper("wrong_prompt", *honest_reply(), REQUEST_MESSAGE), request=sent(prompts=None)) is None


@pytest.mark.parametrize("change, reason", [
    ({"purpose": "eval"}, "wrong_request"),
    ({"worker_id": WORKER + 1}, "wrong_request"),
])
def test_a_reply_to_another_purpose_or_from_another_worker_id_is_refused(change, reason):
    header, frames = honest_reply()
    assert check(header.model_copy(update=change), frames).reason == reason


def test_policy_versions_outside_min_version_and_the_newest_published_are_refused():
    assert check(*honest_reply(version=0)).reason == "policy_version"  # older than the request's min_version
    assert check(*honest_reply(version=3), newest_version=2).reason == "policy_version"
    assert "999" in check(*tamper("future_version", *honest_reply(), REQUEST_MESSAGE)).detail


def test_a_completion_of_exactly_max_tokens_passes_one_more_does_not():
    def first_completion_of(length):
        header, frames = honest_reply()
        items = split(header, frames)
        items[0] = Item(items[0].meta, items[0].prompt, np.full(length, 5, np.int32), np.full(length, -1.0, np.float32))
        return join(header, items)

    assert check(*first_completion_of(MAX_TOKENS)) is None
    assert check(*first_completion_of(MAX_TOKENS + 1)).reason == "too_long"


def test_details_do_not_carry_long_values_from_the_message():
    header, frames = honest_reply()
    metas = [header.samples[0].model_copy(update={"task_id": "x" * 3000}), *header.samples[1:]]
    problem = check(header.model_copy(update={"samples": metas}), frames)
    assert problem.reason == "unknown_task" and len(problem.detail) < 200


# ---------------------------------------------------------------- receive limits


def test_receive_limits_cover_the_largest_frame_a_worker_sends_with_margin():
    small = learner_receive_limits(samples_per_message=32, tokens_per_sample=1024, replies_per_connection=1)
    assert small.max_message_bytes == 2 * MAX_HEADER_BYTES  # headers dominate: a worker may send one this big
    assert small.receive_hwm == 2 * (1 + 2)
    big = learner_receive_limits(samples_per_message=512 * 16, tokens_per_sample=4096, replies_per_connection=3, margin=3)
    assert big.max_message_bytes == 3 * 512 * 16 * 4096 * 4 and big.receive_hwm == 3 * 5
    with pytest.raises(ValueError):
        learner_receive_limits(samples_per_message=0, tokens_per_sample=1, replies_per_connection=1)


def test_receive_limits_of_a_config_count_dynamic_sampling_evaluation_and_async():
    def limits(overrides, held_out=0):
        data: dict = {"rollout": {"max_model_len": 4096, "prompts_per_step": 256, "samples_per_prompt": 16}}
        for section, values in overrides.items():
            data.setdefault(section, {}).update(values)
        return receive_limits(Config.model_validate(data), held_out_tasks=held_out)

    base = limits({})
    assert base.max_message_bytes == 2 * 256 * 16 * 4096 * 4
    assert limits({"train": {"algorithm": "dapo"}}).max_message_bytes == 4 * base.max_message_bytes  # 4x the prompts per round
    assert limits({}, held_out=100_000).max_message_bytes == 2 * 100_000 * 4096 * 4  # one worker may get the whole split
    assert limits({"eval": {"before": False, "after": False}}, held_out=100_000) == base  # no evaluation: not counted
    assert limits({"rollout": {"async": True}}).receive_hwm > base.receive_hwm
    assert limits({"rollout": {"num_workers": 4}}).receive_hwm > base.receive_hwm


def test_the_step_metrics_count_rejections_in_all_and_by_reason():
    from learner.step_metrics import rejection_metrics

    metrics = rejection_metrics(Counter({"not_msgpack": 3}), Counter({"sample_count": 2, "unknown_task": 1}))
    assert metrics == {"wire/rejected": 6, "wire/rejected/not_msgpack": 3, "wire/rejected/sample_count": 2,
                       "wire/rejected/unknown_task": 1}


def test_a_group_of_one_that_got_through_gets_advantage_0_instead_of_stopping_the_learner():
    from learner.collect import with_advantages
    from rl.coordinator import Trajectory

    header, _ = honest_reply()
    lone = Trajectory(header.samples[0], np.array([1], np.int32), np.array([2], np.int32), np.array([-1.0], np.float32))
    pair = [Trajectory(meta, np.array([1], np.int32), np.array([2], np.int32), np.array([-1.0], np.float32))
            for meta in header.samples[2:4]]  # task t1's two samples, rewards 0 and 1
    for algorithm in ("grpo", "rloo"):
        samples = with_advantages([lone, *pair], Config.model_validate({"train": {"algorithm": algorithm}}))
        assert samples[0].advantage == 0.0 and samples[1].advantage < 0 < samples[2].advantage


def test_the_learner_socket_drops_a_peer_whose_frame_is_over_the_limit_and_keeps_serving_others():
    import zmq

    from rl.replies import ReceiveLimits
    from rl.transport import LearnerEndpoint, WorkerEndpoint
    from rl.wire import Hello

    learner = LearnerEndpoint(limits=ReceiveLimits(max_message_bytes=2**20, receive_hwm=5))
    assert learner.socket.getsockopt(zmq.MAXMSGSIZE) == 2**20 and learner.socket.getsockopt(zmq.RCVHWM) == 5
    big, honest = WorkerEndpoint(learner.address, identity=b"big"), WorkerEndpoint(learner.address, identity=b"honest")
    try:
        big.socket.send_multipart([encode(Hello(worker_name="big", pid=1, host="h"))[0], b"\0" * (2**20 + 1)])
        assert learner.receive(timeout_ms=500) is None  # never delivered: ZeroMQ closed that connection
        honest.send(Hello(worker_name="honest", pid=2, host="h"))
        identity, message, _ = learner.receive(timeout_ms=5000)
        assert identity == b"honest" and message.worker_name == "honest"
    finally:
        big.close()
        honest.close()
        learner.close()
