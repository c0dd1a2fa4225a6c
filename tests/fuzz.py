"""Malformed wire messages, for fuzzing `rl.wire.decode` and live sockets.

`malformed_messages(count, seed)` is the entry point for socket-level fuzzing (unit tests here and
live learner/worker runs): each item is the list of frames a peer sends (after any ZeroMQ identity),
and every one of them is checked to be rejected by `decode`, so a receiver's rejection counter must
grow by exactly one per message. `fuzz_inputs` yields the same families without that filter
(some mutations happen to stay valid), for property tests of `decode` itself.

Nothing here is pickled or evaluated; headers are built with msgpack only.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import numpy as np

from rl.wire import (
    MAX_DIMS,
    MAX_HEADER_BYTES,
    MAX_LIST_ITEMS,
    MAX_TENSORS,
    MESSAGE_TYPES,
    ChatMessage,
    Message,
    SampleMeta,
    SamplingParams,
    Task,
    TensorMeta,
    WireError,
    decode,
    encode,
)

Frames = list[bytes]
ONE_MB = 1 << 20


# ------------------------------------------------------------------ valid examples


def _example_fields() -> dict[str, tuple[dict[str, Any], list[np.ndarray]]]:
    """Keyword arguments and array frames of one valid message per kind this module knows."""
    task = Task(
        task_id="kk_3p/train/7", distribution="kk_3p",
        messages=[ChatMessage(role="system", content="Think."), ChatMessage(role="user", content="Who is a knave?")],
        answer="Ava is a knight", reward_set="kk",
        metadata={"solution": {"Ava": "knight"}, "statements": [{"op": "not", "arg": {"op": "is", "who": 0, "role": "knave"}}],
                  "numbers": [1, 2, 3], "target": 6, "ratio": 0.5, "flag": True, "none": None},
    )
    metas = [
        SampleMeta(sample_id=f"w0-r3-t0-s{i}", task_id="kk_3p/train/7", distribution="kk_3p", prompt_len=3,
                   completion_len=c, reward=r, reward_components={"format": 1.0, "kk": r}, reward_failed=["slow"] if i else [],
                   correct=[True, None, False][i], finish_reason=["stop", "length", "stop"][i], policy_version=2, worker_id=0,
                   text="\\boxed{Ava}")
        for i, (c, r) in enumerate([(2, 1.0), (1, -0.5), (0, 0.0)])
    ]
    tensors = [
        ("model.embed_tokens.weight", "float32", np.arange(12, dtype=np.float32).reshape(3, 4)),
        ("model.norm.weight", "bfloat16", np.arange(5, dtype=np.uint16)),
        ("lm_head.bias", "float16", np.ones((2, 1, 3), dtype=np.float16)),
        ("scalar", "float32", np.array(1.5, dtype=np.float32)),
        ("empty", "float32", np.zeros((0, 7), dtype=np.float32)),
    ]
    return {
        "hello": ({"worker_name": "host:123", "pid": 123, "host": "host"}, []),
        "welcome": ({"worker_id": 1, "model_path": "/models/tiny", "seed": 7, "run_dir": "/runs/a",
                     "rollout": {"num_workers": 1, "temperature": 1.0, "cpu_threads": None, "dtype": "auto"},
                     "reward_sets": {"default": [{"name": "boxed_answer", "weight": 1.0}, {"name": "format", "weight": 0.5, "strict": True}]},
                     "reward_modules": ["tests/rewards_for_tests.py"]}, []),
        "weights": ({"version": 3, "bucket": 0, "num_buckets": 2,
                     "tensors": [TensorMeta(name=n, dtype=d, shape=list(a.shape)) for n, d, a in tensors]}, [a for _, _, a in tensors]),
        "weights_loaded": ({"worker_id": 0, "version": 3, "load_seconds": 0.25}, []),
        "tasks": ({"request_id": 5, "purpose": "train", "min_version": 1,
                   "sampling": SamplingParams(n=2, temperature=1.0, top_p=0.9, max_tokens=16, seed=None), "tasks": [task, task]}, []),
        "samples": ({"request_id": 3, "purpose": "eval", "worker_id": 0, "samples": metas},
                    [np.array([5, 6, 7] * 3, np.int32), np.array([8, 9, 10], np.int32), np.array([-0.1, -0.2, -0.3], np.float32)]),
        "shutdown": ({"reason": "training finished"}, []),
        "worker_failed": ({"worker_id": 2, "error": "RuntimeError: out of memory"}, []),
        "heartbeat": ({"worker_id": 0, "version": 3}, []),
    }


def valid_examples() -> dict[str, tuple[Message, Frames]]:
    """kind -> (message, its encoded frames as bytes), for every kind in MESSAGE_TYPES.

    Raises KeyError naming the kinds this module has no example for (add one to `_example_fields`).
    """
    fields = _example_fields()
    missing = sorted(set(MESSAGE_TYPES) - set(fields))
    if missing:
        raise KeyError(f"tests/fuzz.py has no valid example of message kinds {missing}")
    out = {}
    for kind, message_type in MESSAGE_TYPES.items():
        kwargs, arrays = fields[kind]
        message = message_type(**kwargs)
        out[kind] = (message, to_bytes(encode(message, arrays)))
    return out


def to_bytes(frames: list[Any]) -> Frames:
    return [f.tobytes() if isinstance(f, np.ndarray) else bytes(f) for f in frames]


def pack(header: Any) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


# ------------------------------------------------------------------ mutations

WRONG_VALUES: list[Any] = [
    None, True, False, 0, -1, 2**64 - 1, -(2**63), 2**63, 1.5, -0.0, float("nan"), float("inf"), float("-inf"),
    "", "x", "x" * 5000, "\u0000\ud7ff", [], [None], [[[]]], {}, {"a": 1}, {"": None}, [1, "a", None], msgpack.ExtType(5, b"x"),
]
SCHEMAS: list[Any] = [0, 2, -1, 99, 2**64 - 1, "1", 1.0, True, None, [], {}, [1], b"\x01"]
KINDS: list[Any] = [
    "", "Hello", "HELLO", " hello", "hello ", "hello\x00", "exec", "eval", "__class__", "__init__", "pickle", "os.system",
    "Message", "kind", None, 0, 1, 1.5, True, [], ["hello"], {"hello": 1}, "x" * 10_000, "h\u00e9llo", b"hello",
]


class _Mutator:
    def __init__(self, rng: random.Random, big: bool):
        self.rng = rng
        self.big = big
        self.examples = valid_examples()
        self.families: list[tuple[int, Callable[[], Frames]]] = [
            (6, self.random_bytes), (2, self.empty_frames), (8, self.truncated), (10, self.bit_flips), (4, self.splices),
            (2, self.trailing_bytes), (4, self.wrong_schema), (4, self.unknown_kind), (10, self.wrong_field_type),
            (3, self.extra_field), (3, self.missing_field), (3, self.not_a_mapping), (3, self.claims_huge_lengths),
            (2, self.deep_nesting), (3, self.bad_keys), (3, self.bad_strings), (5, self.bad_numbers), (5, self.bad_shapes),
            (5, self.wrong_frame_count), (5, self.wrong_frame_size), (2, self.negative_token_ids), (2, self.long_lists),
            (2, self.many_frames), (2, self.oversized), (2, self.big_garbage_frames),
        ]
        self.weights = [w for w, _ in self.families]
        self._mb = rng.randbytes(ONE_MB) if big else b""
        # large items per generator: enough to exercise every limit, few enough to keep a run light
        self.budget = {"oversized": 4, "frames": 4, "mb": 40, "tensors": 4} if big else dict.fromkeys(("oversized", "frames", "mb", "tensors"), 0)
        self._oversized = b"\x81\xa4kind\xda" + b"\x00" * (MAX_HEADER_BYTES + 1) if big else b""

    def __call__(self) -> Frames:
        return self.rng.choices(self.families, self.weights)[0][1]()

    # -- helpers
    def spend(self, what: str) -> bool:
        if self.budget[what] <= 0:
            return False
        self.budget[what] -= 1
        return True

    def kind(self) -> str:
        return self.rng.choice(list(self.examples))

    def valid(self, kind: str | None = None) -> Frames:
        return list(self.examples[kind or self.kind()][1])

    def header(self, kind: str | None = None) -> dict[str, Any]:
        return msgpack.unpackb(self.valid(kind)[0])

    def with_header(self, header: Any, kind: str | None = None, frames: Frames | None = None) -> Frames:
        payload = self.valid(kind)[1:] if frames is None else frames
        return [pack(header), *payload]

    # -- families
    def random_bytes(self) -> Frames:
        rng = self.rng
        frames = [rng.randbytes(rng.choice([0, 1, 2, 5, 20, 100, 1000]))]
        frames += [rng.randbytes(rng.randint(0, 64)) for _ in range(rng.choice([0, 0, 1, 3]))]
        return frames

    def empty_frames(self) -> Frames:
        return [b""] * self.rng.choice([1, 2, 3, 4, 10, 100])

    def truncated(self) -> Frames:
        frames = self.valid()
        head = frames[0]
        frames[0] = head[: self.rng.randrange(len(head))]
        return frames

    def bit_flips(self) -> Frames:
        frames = self.valid()
        index = 0 if len(frames) == 1 or self.rng.random() < 0.8 else self.rng.randrange(len(frames))
        data = bytearray(frames[index])
        for _ in range(self.rng.choice([1, 1, 2, 3, 8])):
            if data:
                data[self.rng.randrange(len(data))] ^= 1 << self.rng.randrange(8)
        frames[index] = bytes(data)
        return frames

    def splices(self) -> Frames:
        frames = self.valid()
        head = bytearray(frames[0])
        at = self.rng.randrange(len(head) + 1)
        if self.rng.random() < 0.5:
            head[at:at] = self.rng.randbytes(self.rng.randint(1, 8))
        else:
            del head[at : at + self.rng.randint(1, 8)]
        frames[0] = bytes(head)
        return frames

    def trailing_bytes(self) -> Frames:
        frames = self.valid()
        frames[0] += self.rng.choice([b"\xc0", b"\x00", pack({"kind": "exec"}), self.rng.randbytes(9)])
        return frames

    def wrong_schema(self) -> Frames:
        kind = self.kind()
        header = self.header(kind)
        if self.rng.random() < 0.15:
            del header["schema"]
        else:
            header["schema"] = self.rng.choice(SCHEMAS)
        return self.with_header(header, kind)

    def unknown_kind(self) -> Frames:
        kind = self.kind()
        header = self.header(kind)
        if self.rng.random() < 0.15:
            del header["kind"]
        else:
            header["kind"] = self.rng.choice(KINDS)
        return self.with_header(header, kind)

    def _paths(self, node: Any, path: tuple = ()) -> Iterator[tuple]:
        """Every location in a header (map keys and list indices) except the top-level kind/schema."""
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            if path or key not in ("kind", "schema"):
                yield (*path, key)
                yield from self._paths(value, (*path, key))

    def _replace(self, header: Any, path: tuple, value: Any) -> None:
        node = header
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    def wrong_field_type(self) -> Frames:
        kind = self.kind()
        header = self.header(kind)
        paths = list(self._paths(header))
        if paths:
            self._replace(header, self.rng.choice(paths), self.rng.choice(WRONG_VALUES))
        return self.with_header(header, kind)

    def extra_field(self) -> Frames:
        kind = self.kind()
        header = self.header(kind)
        maps = [header] + [v for v in _walk(header) if isinstance(v, dict) and v is not header]
        target = self.rng.choice(maps)
        target[self.rng.choice(["__class__", "extra", "x" * 300, "kind2", "Schema"])] = self.rng.choice(WRONG_VALUES)
        return self.with_header(header, kind)

    def missing_field(self) -> Frames:
        kind = self.kind()
        header = self.header(kind)
        paths = [p for p in self._paths(header) if not isinstance(p[-1], int)]
        if paths:
            path = self.rng.choice(paths)
            node = header
            for key in path[:-1]:
                node = node[key]
            del node[path[-1]]
        return self.with_header(header, kind)

    def not_a_mapping(self) -> Frames:
        value = self.rng.choice([None, 0, -1, 1.5, "hello", [], ["kind", "hello"], [1, 2], True, b"\x81\xa4kind"])
        return [pack(value)]

    def claims_huge_lengths(self) -> Frames:
        prefix = self.rng.choice([
            b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff",
            b"\xc9\xff\xff\xff\xff\x01", b"\xdc\xff\xff", b"\xde\xff\xff",
            b"\x82\xa4kind\xa5hello\xa6schema\x01" + b"\xdd\x7f\xff\xff\xff",
        ])
        return [prefix + self.rng.randbytes(self.rng.randint(0, 16))]

    def deep_nesting(self) -> Frames:
        depth = self.rng.choice([40, 200, 1023, 1100, 5000])
        nested: Any = 1
        for _ in range(min(depth, 900)):  # msgpack's packer stops at 1024 levels; build the rest by hand
            nested = [nested]
        if depth <= 900 and self.rng.random() < 0.7:
            header = self.header("tasks")
            header["tasks"][0]["metadata"]["deep"] = nested if self.rng.random() < 0.5 else {"a": nested}
            return self.with_header(header, "tasks")
        return [b"\x91" * depth + b"\xc0"]

    def bad_keys(self) -> Frames:
        kind = self.kind()
        header = self.header(kind)
        choice = self.rng.randrange(4)
        if choice == 0:  # a top-level key that is not a string
            entries = list(header.items()) + [(self.rng.choice([1, -1, 1.5, True, None]), 1)]
            return [_raw_map(entries), *self.valid(kind)[1:]]
        if choice == 1:  # the kind as a bin key
            rest = [(k, v) for k, v in header.items() if k != "kind"]
            return [_raw_map([(b"kind", kind), *rest]), *self.valid(kind)[1:]]
        if choice == 2:  # an unhashable (list) key
            return [b"\x81\x91\x01\x02"]
        header = self.header("tasks")  # an int key inside a free-form mapping
        header["tasks"][0]["metadata"] = {"ok": {1: "int key"}}
        return self.with_header(header, "tasks")

    def bad_strings(self) -> Frames:
        bad = self.rng.choice([b"\xa2\xff\xfe", b"\xa3\xed\xa0\x80", b"\xa1\x80", b"\xd9\x02\xc3\x28"])
        kind = self.rng.choice(["shutdown", "hello", "worker_failed"])
        field = {"shutdown": "reason", "hello": "host", "worker_failed": "error"}[kind]
        header = self.header(kind)
        del header[field]
        body = pack(header)
        # append one more entry with an invalid UTF-8 string value: bump the fixmap count by one
        assert 0x80 <= body[0] < 0x8F
        return [bytes([body[0] + 1]) + body[1:] + pack(field) + bad]

    def bad_numbers(self) -> Frames:
        cases = [
            ("weights_loaded", ("load_seconds",), [float("nan"), float("inf"), -1.0, -1e-9]),
            ("weights_loaded", ("worker_id",), [-1, 2**64 - 1, -(2**63)]),
            ("weights_loaded", ("version",), [-1, 2**63, 1.0, True]),
            ("weights", ("version",), [-1, 2**64 - 1, 1.5]),
            ("weights", ("bucket",), [2, 3, -1, 2**63]),
            ("weights", ("num_buckets",), [0, -1, 2**64 - 1]),
            ("tasks", ("sampling", "temperature"), [float("nan"), float("inf"), -0.5]),
            ("tasks", ("sampling", "top_p"), [0.0, 1.5, float("nan"), float("inf")]),
            ("tasks", ("sampling", "n"), [0, -1, 2**40]),
            ("tasks", ("sampling", "max_tokens"), [0, 2**31, 2**64 - 1]),
            ("tasks", ("sampling", "seed"), [2**64 - 1, 1.5, "1"]),
            ("tasks", ("request_id",), [-1, "5"]),
            ("tasks", ("min_version",), [-1, 2**63]),
            ("samples", ("samples", 0, "reward"), [float("nan"), float("inf"), float("-inf")]),
            ("samples", ("samples", 0, "reward_components", "format"), [float("nan"), float("-inf")]),
            ("samples", ("samples", 0, "prompt_len"), [-1, 2**31, 2**62]),
            ("samples", ("samples", 1, "completion_len"), [-1, 2**40]),
            ("samples", ("samples", 2, "policy_version"), [-1, 2**64 - 1]),
            ("samples", ("worker_id",), [-1, 1.0]),
            ("welcome", ("worker_id",), [-1, 2**64 - 1]),
            ("welcome", ("seed",), [2**64 - 1, 0.5]),
            ("welcome", ("heartbeat_interval_s",), [0.0, -1.0, float("nan"), float("inf")]),
            ("welcome", ("learner_timeout_s",), [0.0, float("inf")]),
            ("hello", ("pid",), [-1, 2**64 - 1, "123"]),
            ("heartbeat", ("worker_id",), [-1, 2**63]),
            ("heartbeat", ("version",), [-1, 0.5]),
        ]
        kind, path, values = self.rng.choice([c for c in cases if c[0] in self.examples])
        header = self.header(kind)
        try:
            self._replace(header, path, self.rng.choice(values))
        except (KeyError, IndexError, TypeError):  # an example without that field
            header["schema"] = 0
        return self.with_header(header, kind)

    def bad_shapes(self) -> Frames:
        header = self.header("weights")
        frames = self.valid("weights")
        i = self.rng.randrange(len(header["tensors"]))
        meta = header["tensors"][i]
        item = {"float32": 4, "bfloat16": 2, "float16": 2}[meta["dtype"]]
        shape, elements = self.rng.choice([
            ([2**62, 4], 0),  # 2**64 elements: wraps around to 0 in int64 arithmetic, so an empty frame "fits"
            ([2**61, 2**3], 0),
            ([2**32, 2**32], 0),
            ([0, 2**63], 0),
            ([-1, -3], 3),  # product 3: the frame size matches, numpy's reshape would fail
            ([-2, 3], 6),
            ([0, -5], 0),
            ([2**40 + 1], 4),
            ([1] * (MAX_DIMS + 1), 1),
            ([1.0, 2.0], 2),
            (["3", "4"], 12),
            ([[3], [4]], 12),
            ([None], 1),
            ([True, True], 1),
            (3, 3),
            ("3", 3),
        ])
        meta["shape"] = shape
        frames[1 + i] = b"\x00" * (elements * item)
        if self.rng.random() < 0.3:
            meta["shape"] = [len(frames[1 + i]) // item]
            meta["dtype"] = self.rng.choice(["int32", "float64", "bfloat", "", "torch.float32", "uint8", 4, None])
        frames[0] = pack(header)
        return frames

    def wrong_frame_count(self) -> Frames:
        kind = self.kind()
        frames = self.valid(kind)
        if len(frames) > 1 and self.rng.random() < 0.5:
            drop = self.rng.randrange(1, len(frames))
            return frames[:drop] + frames[drop + 1 :]
        extra = [self.rng.choice([b"", b"\x00" * 4, b"extra", self.rng.randbytes(12)]) for _ in range(self.rng.choice([1, 2, 5]))]
        at = self.rng.randint(1, len(frames))
        return frames[:at] + extra + frames[at:]

    def wrong_frame_size(self) -> Frames:
        kind = self.rng.choice(["weights", "samples"])
        frames = self.valid(kind)
        i = self.rng.randrange(1, len(frames))
        delta = self.rng.choice([-4, -2, -1, 1, 2, 3, 4, 8, 1000])
        if delta < 0 and len(frames[i]) < -delta:
            delta = -delta
        frames[i] = frames[i][: len(frames[i]) + delta] if delta < 0 else frames[i] + b"\x00" * delta
        return frames

    def negative_token_ids(self) -> Frames:
        frames = self.valid("samples")
        i = self.rng.choice([1, 2])
        ids = np.frombuffer(frames[i], np.int32).copy()
        ids[self.rng.randrange(len(ids))] = self.rng.choice([-1, -(2**31)])
        frames[i] = ids.tobytes()
        return frames

    def long_lists(self) -> Frames:
        choice = self.rng.randrange(4)
        if choice == 2 and not self.spend("tensors"):
            choice = 3
        if choice == 0:  # one more item than msgpack may unpack, cheap to write (nil is one byte)
            return [b"\x82\xa4kind\xa7samples\xa7samples\xdd" + (MAX_LIST_ITEMS + 1).to_bytes(4, "big") + b"\xc0" * (MAX_LIST_ITEMS + 1)]
        if choice == 1:  # many bad items: validation must stop at the first
            header = self.header("samples")
            header["samples"] = [None] * self.rng.choice([1000, 100_000])
            return self.with_header(header, "samples")
        if choice == 2:
            header = self.header("weights")
            header["tensors"] = [{"name": "w", "dtype": "float32", "shape": [1]}] * (MAX_TENSORS + 1)
            return self.with_header(header, "weights", frames=[])
        header = self.header("samples")
        header["samples"][0]["reward_components"] = {f"c{i}": "x" for i in range(4000)}
        return self.with_header(header, "samples")

    def many_frames(self) -> Frames:
        kind = self.kind()
        head = self.valid(kind)[0]
        count = self.rng.choice([50, 1000, MAX_TENSORS + 2])
        if count > 1000 and not self.spend("frames"):
            count = 1000
        return [head] + [b""] * count

    def oversized(self) -> Frames:
        if not self.spend("oversized"):
            return [b"\xdb\xff\xff\xff\xff" + b"\x00" * 1000]
        return [self._oversized]

    def big_garbage_frames(self) -> Frames:
        if not self.spend("mb"):
            return [self.rng.randbytes(4096)]
        rng = self.rng
        choice = rng.randrange(3)
        if choice == 0:  # a 1 MB garbage header
            return [self._mb]
        if choice == 1:  # a valid header of a kind without arrays, then a 1 MB frame
            return [self.valid(rng.choice(["shutdown", "hello", "worker_failed"]))[0], self._mb]
        frames = self.valid("weights")  # the right number of frames, one of them 1 MB
        frames[rng.randrange(1, len(frames))] = self._mb
        return frames


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _raw_map(entries: list[tuple[Any, Any]]) -> bytes:
    """A msgpack map written entry by entry, so keys of any packable type can be used."""
    n = len(entries)
    head = bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")
    return head + b"".join(pack(k) + pack(v) for k, v in entries)


# ------------------------------------------------------------------ public entry points


def fuzz_inputs(count: int, seed: int = 0, *, big: bool = False) -> Iterator[Frames]:
    """`count` fuzzed messages (frames as bytes); most are malformed, a few mutations stay valid."""
    mutate = _Mutator(random.Random(seed), big)
    for _ in range(count):
        yield mutate()


def is_rejected(frames: Frames) -> bool:
    try:
        decode(frames)
    except WireError:
        return True
    return False


def malformed_messages(count: int, seed: int = 0, *, big: bool = True) -> list[Frames]:
    """`count` multipart messages (lists of frames as bytes, without a ZeroMQ identity), each of which
    `rl.wire.decode` rejects: garbage, truncations and bit flips of valid messages of every kind, wrong
    schema versions, unknown kinds, wrong field types and values, extra and missing fields, huge length
    claims, deep nesting, wrong frame counts and sizes, absurd shapes, ...

    With `big` (default), a few are large, whatever `count`: up to 40 with a 1 MB garbage frame, 4
    headers just over MAX_HEADER_BYTES (16 MiB; one bytes object reused, so memory stays small), 4
    messages of 65,538 frames and 4 of 65,537 tensor entries (about 110 MB to send in all).
    Deterministic for a given (count, seed, big).
    """
    mutate = _Mutator(random.Random(seed), big)
    out: list[Frames] = []
    while len(out) < count:
        for _ in range(20):
            frames = mutate()
            if frames and is_rejected(frames):
                out.append(frames)
                break
        else:  # pragma: no cover - every family is mostly malformed
            out.append([b"\xc1"])
    return out
