"""Fuzzing the wire protocol: `decode` raises only WireError, and live endpoints survive garbage.

The generators live in tests/fuzz.py (`malformed_messages(count, seed)` is meant for live
learner/worker runs too).
"""

import logging
import math
import socket
import struct
import time
from collections import Counter

import msgpack
import numpy as np
import pytest
import zmq

from rl import transport
from rl.transport import LearnerEndpoint, WorkerEndpoint, receive_valid
from rl.wire import (
    MAX_HEADER_BYTES,
    MESSAGE_TYPES,
    SCHEMA_VERSION,
    Hello,
    SamplingParams,
    Shutdown,
    Task,
    Tasks,
    Weights,
    WeightsLoaded,
    Welcome,
    WireError,
    check_payload,
    decode,
    encode,
)
from tests.fuzz import fuzz_inputs, is_rejected, malformed_messages, pack, to_bytes, valid_examples

REASONS = {
    "empty", "bad_frame", "oversized_header", "not_msgpack", "not_mapping", "schema_version", "unknown_kind",
    "invalid_header", "payload_frames", "payload_size", "payload_values",
}


def revalidates(message, payload) -> None:
    """A decoded message is fully valid: its model accepts it again and it survives another round trip."""
    again = type(message).model_validate(message.model_dump(mode="json"), strict=True, context={"wire": True})
    assert again == message
    check_payload(message, payload)
    message2, payload2 = decode(to_bytes(encode(message, payload)))
    assert message2 == message and [bytes(p) for p in payload2] == [bytes(p) for p in payload]


# ------------------------------------------------------------------ decode


def test_every_kind_has_a_valid_example_that_round_trips():
    examples = valid_examples()
    assert set(examples) == set(MESSAGE_TYPES)
    for kind, (message, frames) in examples.items():
        decoded, payload = decode(frames)
        assert type(decoded) is MESSAGE_TYPES[kind] and decoded == message
        assert [bytes(p) for p in payload] == frames[1:]
        assert to_bytes(encode(decoded, payload)) == frames
        revalidates(decoded, payload)


def test_decode_fuzz_raises_only_wire_error():
    """10,000 seeded inputs of every family: each is rejected with WireError or decodes to a valid message."""
    start = time.perf_counter()
    reasons: Counter[str] = Counter()
    accepted = slowest = 0.0
    for frames in fuzz_inputs(10_000, seed=20240611):
        t = time.perf_counter()
        try:
            message, payload = decode(frames)
        except WireError as err:
            assert err.reason in REASONS, err.reason
            reasons[err.reason] += 1
        else:
            accepted += 1
            revalidates(message, payload)
        slowest = max(slowest, time.perf_counter() - t)
    elapsed = time.perf_counter() - start
    # zmq never delivers the first two; oversized headers are in test_decode_fuzz_large_inputs
    assert set(reasons) >= REASONS - {"empty", "bad_frame", "oversized_header"}, reasons
    assert sum(reasons.values()) > 9_000  # nearly all fuzzed inputs are malformed
    assert slowest < 1.0, f"one input took {slowest:.2f} s to reject"
    assert elapsed < 30, f"{elapsed:.1f} s"  # about 1.5 s on an idle core


def test_decode_fuzz_large_inputs():
    """The large families: 1 MB frames, a header over MAX_HEADER_BYTES, 65,538 frames, 65,537 tensors."""
    reasons = Counter()
    for frames in malformed_messages(400, seed=3, big=True):
        with pytest.raises(WireError) as info:
            decode(frames)
        reasons[info.value.reason] += 1
    assert reasons["oversized_header"] >= 1 and reasons["payload_frames"] >= 1


def test_malformed_messages_helper_is_deterministic_and_all_rejected():
    first = malformed_messages(300, seed=5, big=False)
    assert first == malformed_messages(300, seed=5, big=False)
    assert first != malformed_messages(300, seed=6, big=False)
    assert len(first) == 300 and all(isinstance(m, list) and m and all(isinstance(f, bytes) for f in m) for m in first)
    assert all(is_rejected(m) for m in first)


def weights_header(shape, dtype="float32", **fields):
    header = {"kind": "weights", "schema": 1, "version": 0, "bucket": 0, "num_buckets": 1,
              "tensors": [{"name": "w", "dtype": dtype, "shape": shape}], **fields}
    return pack(header)


def nested(depth):
    value = 1
    for _ in range(depth):
        value = [value]
    return value


def tasks_header(metadata):
    return pack({"kind": "tasks", "schema": 1, "request_id": 0, "purpose": "train", "min_version": 0,
                 "sampling": {"n": 1, "temperature": 0.0, "top_p": 1.0, "max_tokens": 1},
                 "tasks": [{"task_id": "t", "distribution": "d", "messages": [], "answer": "a", "metadata": metadata}]})


@pytest.mark.parametrize(
    "frames, reason",
    [
        # Accepted before hardening, then crashed the worker in np.frombuffer(...).reshape(shape):
        pytest.param([weights_header([2**62, 4]), b""], "invalid_header", id="shape-product-wraps-int64-to-0"),
        pytest.param([weights_header([-1, -4]), b"\0" * 16], "invalid_header", id="negative-dims-with-matching-size"),
        pytest.param([weights_header([1] * 9), b"\0" * 4], "invalid_header", id="nine-dims"),
        pytest.param([weights_header([3], dtype="bfloat16"), b"\0" * 5], "payload_size", id="bfloat16-odd-size"),
        # Accepted before hardening:
        pytest.param([pack({"kind": "shutdown", "schema": True, "reason": "x"})], "schema_version", id="schema-true"),
        pytest.param([pack({"kind": "shutdown", "schema": 1.0, "reason": "x"})], "schema_version", id="schema-1.0"),
        pytest.param([weights_header([1], bucket=3, num_buckets=2), b"\0" * 4], "invalid_header", id="bucket-past-last"),
        pytest.param([pack({"kind": "weights_loaded", "schema": 1, "worker_id": -5, "version": 0, "load_seconds": 0.1})],
                     "invalid_header", id="negative-worker-id"),
        pytest.param([pack({"kind": "weights_loaded", "schema": 1, "worker_id": 0, "version": 0, "load_seconds": float("nan")})],
                     "invalid_header", id="nan-seconds"),
        pytest.param([pack({"kind": "weights_loaded", "schema": 1, "worker_id": 0, "version": 2**64 - 1, "load_seconds": 0.1})],
                     "invalid_header", id="uint64-version"),
        pytest.param([pack({"kind": "hello", "schema": 1, "worker_name": "w", "pid": "123", "host": "h"})],
                     "invalid_header", id="string-for-int-strict"),
        pytest.param([tasks_header({"deep": nested(900)})], "invalid_header", id="metadata-900-deep"),  # RecursionError in repr before
        pytest.param([tasks_header({"x": {1: 2}})], "not_msgpack", id="int-key-in-metadata"),
        pytest.param([tasks_header({"x": [float("nan")]})], "invalid_header", id="nan-in-metadata"),
        # Raised other exception types before hardening:
        pytest.param([np.zeros((2, 2), np.float32)], "not_msgpack", id="multi-byte-buffer-BufferError"),
        pytest.param(["not bytes"], "bad_frame", id="str-frame-TypeError"),
        pytest.param([b"\x91" * 5000 + b"\xc0"], "not_msgpack", id="msgpack-stack-overflow"),
        pytest.param([b"\x81\x91\x01\x02"], "not_msgpack", id="unhashable-key"),
        pytest.param([b"\x81\xa2\xff\xfe\x01"], "not_msgpack", id="invalid-utf8"),
        pytest.param([pack({"kind": "shutdown", "schema": 1, "reason": msgpack.ExtType(1, b"x")})], "not_msgpack", id="ext-type"),
        pytest.param([b"\xd6\xff\x00\x00\x00\x01"], "not_msgpack", id="timestamp"),
        pytest.param([pack({b"kind": "shutdown", "schema": 1, "reason": "x"})], "not_msgpack", id="bin-key"),
        pytest.param([b"\xdd\xff\xff\xff\xff"], "not_msgpack", id="claims-4G-items"),
        pytest.param([b"\x80" + b"\xc0"], "not_msgpack", id="extra-data"),
        pytest.param([b"\x00" * (MAX_HEADER_BYTES + 1)], "oversized_header", id="oversized"),
        pytest.param([pack({"kind": "shutdown", "schema": 1, "reason": "x"})] + [b""] * 70_000, "payload_frames", id="70k-frames"),
        pytest.param([], "empty", id="no-frames"),
    ],
)
def test_known_crash_cases_are_rejected(frames, reason):
    with pytest.raises(WireError) as info:
        decode(frames)
    assert info.value.reason == reason


def test_negative_token_ids_are_rejected():
    _, frames = valid_examples()["samples"]
    ids = np.frombuffer(frames[2], np.int32).copy()
    ids[0] = -1
    with pytest.raises(WireError) as info:
        decode([frames[0], frames[1], ids.tobytes(), frames[3]])
    assert info.value.reason == "payload_values"


def test_many_invalid_list_items_are_rejected_quickly():
    """Pydantic collected one error per bad item: 2**20 of them took 6 s to validate and 30 s to list."""
    header = pack({"kind": "samples", "schema": 1, "request_id": 0, "purpose": "train", "worker_id": 0, "samples": [None] * (1 << 20)})
    start = time.perf_counter()
    with pytest.raises(WireError):
        decode([header, b"", b"", b""])
    assert time.perf_counter() - start < 1.0


def test_error_messages_and_reasons_do_not_carry_message_text():
    for header in ({"kind": "k" * 100_000, "schema": 1}, {"kind": "shutdown", "schema": "s" * 100_000},
                   {"kind": "shutdown", "schema": 1, "reason": "x", "e" * 100_000: 1}):
        with pytest.raises(WireError) as info:
            decode([pack(header)])
        assert len(str(info.value)) < 500 and info.value.reason in REASONS


def test_constraints_keep_legitimate_local_use():
    # Built locally, free-form fields may hold what the sender's code puts there (tuples, dates);
    # they are checked only on decode, after JSON-mode encoding turned them into plain values.
    import datetime

    task = Task(task_id="t", distribution="d", messages=[], answer="a", metadata={"numbers": (1, 2), "when": datetime.date(2024, 1, 1)})
    message, _ = decode(encode(Tasks(request_id=0, purpose="eval", min_version=0, tasks=[task],
                                     sampling=SamplingParams(n=1, temperature=0, top_p=1, max_tokens=8))))
    assert message.tasks[0].metadata == {"numbers": [1, 2], "when": "2024-01-01"}
    assert message.sampling.temperature == 0.0
    welcome, _ = decode(encode(Welcome(worker_id=0, model_path="m", rollout={}, reward_sets={"default": []}, seed=-3, run_dir="r")))
    assert welcome.seed == -3
    big = np.zeros((0, 3), np.float32)
    weights = Weights(version=0, bucket=1, num_buckets=2, tensors=[{"name": "e", "dtype": "float32", "shape": [0, 3]}])
    assert decode(encode(weights, [big]))[0] == weights


# ------------------------------------------------------------------ receive_valid


class FakeSocket:
    """Just enough of a zmq socket for receive_valid: a queue of multipart messages."""

    def __init__(self, messages):
        self.messages = [[zmq.Frame(f) for f in m] for m in messages]

    def poll(self, timeout):
        return bool(self.messages)

    def recv_multipart(self, copy=False):
        return self.messages.pop(0)


def test_receive_valid_counts_a_router_message_without_identity_or_header():
    hello = to_bytes(encode(Hello(worker_name="w", pid=1, host="h")))
    sock = FakeSocket([[b"identity-only"], [b"id", b""], [b"id", *hello]])
    rejected = Counter()
    identity, message, _ = receive_valid(sock, 1000, rejected, has_identity=True)
    assert identity == b"id" and isinstance(message, Hello)
    assert rejected == Counter({"no_identity": 1, "not_msgpack": 1})


def test_receive_valid_survives_a_bug_in_decode(monkeypatch):
    def broken(frames):
        raise RuntimeError("bug")

    monkeypatch.setattr(transport, "decode", broken)
    rejected = Counter()
    assert receive_valid(FakeSocket([[b"x"]] * 3), 50, rejected, has_identity=False) is None
    assert rejected == Counter({"decode_error": 3})


def test_receive_valid_logs_first_and_every_100th_per_reason(caplog):
    garbage = [[b"\xc1"]] * 250 + [[pack([1])]] * 3
    rejected = Counter()
    with caplog.at_level(logging.DEBUG, logger="rl.transport"):
        assert receive_valid(FakeSocket(garbage), 1000, rejected, has_identity=False) is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert rejected == Counter({"not_msgpack": 250, "not_mapping": 3})
    assert len(warnings) == 1 + 2 + 1  # not_msgpack #1, #100, #200; not_mapping #1
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 253 - 4


def test_receive_valid_returns_at_its_deadline_under_a_flood():
    rejected = Counter()
    assert receive_valid(FakeSocket([[b"\xc1"]] * 1000), 0, rejected, has_identity=False) is None
    assert sum(rejected.values()) == 1  # a flood cannot keep the caller past its timeout


# ------------------------------------------------------------------ live sockets


def raw_socket(kind, **options):
    sock = zmq.Context.instance().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    for option, value in options.items():
        sock.setsockopt(getattr(zmq, option), value)
    return sock


def receive_until(endpoint, timeout_s=60.0):
    """The first valid message; `receive` may return None while it is busy dropping garbage."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        received = endpoint.receive(timeout_ms=2000)
        if received is not None:
            return received
    raise AssertionError("no valid message arrived")


def test_learner_endpoint_survives_1000_malformed_messages():
    garbage = malformed_messages(1100, seed=11)
    learner = LearnerEndpoint()
    dealer = raw_socket(zmq.DEALER, IDENTITY=b"fuzzer")
    dealer.connect(learner.address)
    try:
        for frames in garbage:
            dealer.send_multipart(frames)
        dealer.send_multipart(to_bytes(encode(Hello(worker_name="fuzzer", pid=1, host="h"))))
        identity, message, payload = receive_until(learner)
        assert identity == b"fuzzer" and message == Hello(worker_name="fuzzer", pid=1, host="h") and payload == []
        assert sum(learner.rejected.values()) == len(garbage) >= 1000
        assert set(learner.rejected) <= REASONS

        # still works both ways
        learner.send(identity, Shutdown(reason="still here"))
        assert dealer.poll(5000)
        assert decode(dealer.recv_multipart())[0] == Shutdown(reason="still here")
        dealer.send_multipart(to_bytes(encode(WeightsLoaded(worker_id=0, version=1, load_seconds=0.5))))
        assert receive_until(learner)[1] == WeightsLoaded(worker_id=0, version=1, load_seconds=0.5)
        assert learner.receive(timeout_ms=50) is None
    finally:
        dealer.close()
        learner.close()


def zmtp_greeting() -> bytes:
    return b"\xff" + b"\x00" * 7 + b"\x01\x7f" + b"\x03\x01" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32  # ZMTP 3.1, NULL


def zmtp_ready(socket_type: bytes) -> bytes:
    body = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type
    return b"\x04" + bytes([len(body)]) + body


def zmtp_peer(host: str, port: int, after_greeting: bytes) -> socket.socket:
    """A raw TCP peer that completes the ZMTP greeting, then sends `after_greeting` verbatim."""
    conn = socket.create_connection((host, port), timeout=5)
    conn.sendall(zmtp_greeting())
    received = b""
    while len(received) < 64:
        chunk = conn.recv(64 - len(received))
        if not chunk:
            break
        received += chunk
    conn.sendall(after_greeting)
    return conn


def test_learner_endpoint_survives_raw_tcp_garbage_and_odd_peers():
    """Bytes that are not ZeroMQ, ZMTP frames claiming huge sizes, wrong socket types, a REQ peer."""
    learner = LearnerEndpoint()
    host, port = learner.address.removeprefix("tcp://").rsplit(":", 1)
    port = int(port)
    req = raw_socket(zmq.REQ)
    worker = WorkerEndpoint(learner.address)
    conns = []
    try:
        for data in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 64, zmtp_greeting()[:30]):
            conns.append(socket.create_connection((host, port), timeout=5))
            conns[-1].sendall(data)
        for after in (
            zmtp_ready(b"DEALER") + b"\x00\x01\xc1",  # one garbage message: rejected and counted
            zmtp_ready(b"DEALER") + b"\x02" + struct.pack(">Q", 2**62) + b"abc",  # a frame claiming 4 EiB
            zmtp_ready(b"DEALER") + b"\x01\x00" + b"\x02" + struct.pack(">Q", 2**40) + b"abc",  # more, then 1 TiB
            zmtp_ready(b"PUB") + b"\x00\x03abc",  # an incompatible socket type
            b"\x04\xff" + b"\xff" * 300,  # a garbage command instead of READY
        ):
            conns.append(zmtp_peer(host, port, after))
        req.connect(learner.address)
        req.send_multipart([pack({"kind": "hello", "schema": 1})])  # REQ puts an empty delimiter frame first
        time.sleep(0.3)
        worker.send(Hello(worker_name="w", pid=2, host="h"))
        identity, message, _ = receive_until(learner)
        assert message == Hello(worker_name="w", pid=2, host="h")
        assert learner.receive(timeout_ms=500) is None  # drains what the other peers got through
        assert learner.rejected["not_msgpack"] >= 2, learner.rejected  # the REQ message, the ZMTP garbage
        learner.send(identity, Shutdown(reason="ok"))
        assert worker.receive(timeout_ms=5000)[0] == Shutdown(reason="ok")
    finally:
        for conn in conns:
            conn.close()
        req.close()
        worker.close()
        learner.close()


def test_worker_endpoint_survives_1000_malformed_messages():
    garbage = malformed_messages(1100, seed=12)
    router = raw_socket(zmq.ROUTER, ROUTER_MANDATORY=1)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    worker = WorkerEndpoint(f"tcp://127.0.0.1:{port}")
    try:
        worker.send(Hello(worker_name="w", pid=3, host="h"))
        assert router.poll(5000)
        identity, *frames = router.recv_multipart()
        assert isinstance(decode(frames)[0], Hello)
        for frames in garbage:
            router.send_multipart([identity, *frames])
        router.send_multipart([identity, *to_bytes(encode(Shutdown(reason="after garbage")))])
        message, payload = receive_until(worker)
        assert message == Shutdown(reason="after garbage") and payload == []
        assert sum(worker.rejected.values()) == len(garbage) >= 1000
        assert set(worker.rejected) <= REASONS

        # still works both ways, arrays included
        weights, weight_frames = valid_examples()["weights"]
        router.send_multipart([identity, *weight_frames])
        message, payload = receive_until(worker)
        assert message == weights
        first = message.tensors[0]
        array = np.frombuffer(payload[0], np.float32).reshape(first.shape)
        assert array.size == math.prod(first.shape) and array[2, 3] == 11.0
        worker.send(WeightsLoaded(worker_id=0, version=weights.version, load_seconds=0.1))
        assert router.poll(5000)
        assert decode(router.recv_multipart()[1:])[0] == WeightsLoaded(worker_id=0, version=weights.version, load_seconds=0.1)
        assert worker.receive(timeout_ms=50) is None
    finally:
        worker.close()
        router.close()


def test_schema_version_constant_is_what_encode_writes():
    assert msgpack.unpackb(encode(Shutdown(reason="x"))[0])["schema"] == SCHEMA_VERSION
