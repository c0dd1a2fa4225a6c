import msgpack
import numpy as np
import pytest

from rl.coordinator import Trajectory, drop_stale, split_evenly, unpack_samples
from rl.wire import RolloutTimings, SampleMeta, Samples, Tasks, TensorMeta, Weights, WireError, decode, encode


def sample_meta(i, prompt_len, completion_len, version=0, request=0):
    return SampleMeta(
        sample_id=f"w0-r{request}-t{i // 2}-s{i % 2}", task_id=f"t{i // 2}", distribution="add_1d",
        prompt_len=prompt_len, completion_len=completion_len, reward=1.0, reward_components={"boxed_answer": 1.0},
        finish_reason="stop", policy_version=version, worker_id=0, text="\\boxed{3}",
    )


def roundtrip(message, frames=()):
    wire_frames = [bytes(memoryview(f).cast("B")) if not isinstance(f, bytes) else f for f in encode(message, frames)]
    return decode(wire_frames)


def test_samples_roundtrip_slices_arrays_per_sample():
    metas = [sample_meta(0, 3, 2), sample_meta(1, 3, 1)]
    frames = [np.array([1, 2, 3, 1, 2, 3], np.int32), np.array([7, 8, 9], np.int32), np.array([-0.5, -1.0, -2.0], np.float32)]
    timings = RolloutTimings(generate_seconds=1.5, score_seconds=0.25, worker_seconds=2.0, peak_rss_bytes=3 << 30)
    message, payload = roundtrip(Samples(request_id=4, purpose="train", worker_id=0, samples=metas, timings=timings), frames)
    assert message.timings == timings and message.timings.gpu_peak_bytes is None
    trajectories = unpack_samples(message, payload)
    assert [t.completion_ids.tolist() for t in trajectories] == [[7, 8], [9]]
    assert trajectories[1].rollout_logprobs.tolist() == [-2.0]
    assert trajectories[0].prompt_ids.tolist() == [1, 2, 3]


def test_weights_roundtrip_and_size_check():
    tensor = np.arange(6, dtype=np.float32).reshape(2, 3)
    header = Weights(version=1, bucket=0, num_buckets=1, tensors=[TensorMeta(name="w", dtype="float32", shape=[2, 3])])
    message, payload = roundtrip(header, [tensor])
    assert np.frombuffer(payload[0], np.float32).reshape(2, 3).tolist() == tensor.tolist()
    with pytest.raises(WireError, match="bytes, expected 24"):
        roundtrip(header, [tensor[:1]])


@pytest.mark.parametrize(
    "frames, error",
    [
        ([b"\xc1garbage"], "not msgpack"),
        ([msgpack.packb([1, 2])], "not a mapping"),
        ([msgpack.packb({"kind": "tasks", "schema": 99})], "schema version"),
        ([msgpack.packb({"kind": "exec", "schema": 1})], "unknown message kind"),
        ([msgpack.packb({"kind": "shutdown", "schema": 1, "reason": 3})], "does not match its schema"),
        ([msgpack.packb({"kind": "shutdown", "schema": 1, "reason": "x"}), b"extra"], "carries no array frames"),
        ([], "empty message"),
    ],
)
def test_malformed_messages_are_rejected(frames, error):
    with pytest.raises(WireError, match=error):
        decode(frames)


def test_tasks_header_validates_nested_fields():
    frames = encode(Tasks(request_id=1, purpose="eval", min_version=0, sampling={"n": 1, "temperature": 0, "top_p": 1, "max_tokens": 8}, tasks=[]))
    header = msgpack.unpackb(frames[0])
    header["sampling"]["n"] = 0
    with pytest.raises(WireError):
        decode([msgpack.packb(header)])


def test_drop_stale_drops_whole_groups_beyond_the_bound():
    fresh = [Trajectory(sample_meta(i, 1, 1, version=3), *(np.zeros(1),) * 3) for i in range(2)]
    old = [Trajectory(sample_meta(i, 1, 1, version=1, request=1), *(np.zeros(1),) * 3) for i in range(2)]
    kept, dropped = drop_stale(fresh + old, current_version=3, max_staleness=1)
    assert kept == fresh and dropped == 2
    kept, dropped = drop_stale(fresh + old, current_version=3, max_staleness=2)
    assert len(kept) == 4 and dropped == 0


def test_split_evenly_covers_all_items_in_order():
    assert list(split_evenly(list(range(7)), 3)) == [[0, 1, 2], [3, 4], [5, 6]]
    assert list(split_evenly([1], 2)) == [[1], []]


def test_live_endpoints_skip_garbage_and_keep_working():
    from rl.transport import LearnerEndpoint, WorkerEndpoint
    from rl.wire import Hello, Shutdown

    learner = LearnerEndpoint()
    worker = WorkerEndpoint(learner.address)
    try:
        worker.socket.send_multipart([b"\xc1 not msgpack"])
        worker.socket.send_multipart([msgpack.packb({"kind": "hello", "schema": 1, "pid": "nan"})])
        worker.send(Hello(worker_name="w", pid=1, host="h"))
        identity, message, _ = learner.receive(timeout_ms=5000)
        assert isinstance(message, Hello) and sum(learner.rejected.values()) == 2
        learner.socket.send_multipart([identity, b"garbage"])
        learner.send(identity, Shutdown(reason="done"))
        message, _ = worker.receive(timeout_ms=5000)
        assert isinstance(message, Shutdown) and message.reason == "done"
        assert sum(worker.rejected.values()) == 1
        assert learner.receive(timeout_ms=50) is None
    finally:
        worker.close()
        learner.close()


@pytest.mark.parametrize("memory", [{"peak_rss_bytes": -1}, {"peak_rss_bytes": 1.5}, {"gpu_peak_bytes": "big"},
                                    {"peak_rss_bytes": 1 << 63}])
def test_a_workers_memory_report_must_be_a_byte_count(memory):
    header = {"kind": "samples", "schema": 1, "request_id": 0, "purpose": "train", "worker_id": 0, "samples": [],
              "timings": {"generate_seconds": 1.0, "score_seconds": 0.0, "worker_seconds": 1.0, **memory}}
    with pytest.raises(WireError, match="timings"):
        decode([msgpack.packb(header), b"", b"", b""])
