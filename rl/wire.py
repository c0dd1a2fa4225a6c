"""Every message that crosses a socket, declared in one place.

A message is a list of ZeroMQ frames: frame 0 is a msgpack header (a mapping with `kind`,
`schema` and the fields below), the other frames are raw array bytes described by the header.
Nothing is ever pickled: a header is validated against its pydantic model before use, and
array frames are reinterpreted with numpy only after their sizes are checked.

Direction and order (learner L, worker W, one DEALER->ROUTER connection per worker):
    W->L Hello, L->W Welcome, L->W Weights* (one per bucket) ... L->W Tasks ... W->L Samples,
    W->L WeightsLoaded after the last bucket of a version, L->W Shutdown; W->L Heartbeat every
    second from a second connection of the worker (its own thread), so liveness never waits on work.
ZeroMQ keeps the order of messages on one connection, so a worker always sees the weights of
version v before the tasks that require v.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

import msgpack
import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    FailFast,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)

SCHEMA_VERSION = 1
MAX_HEADER_BYTES = 16 * 1024 * 1024

# Bounds of a header. They are far above what the framework sends, and keep a small or malformed
# header from costing much: msgpack refuses longer containers before allocating them, lists stop
# validating at their first bad item, and the free-form mappings (task metadata, the rollout config,
# reward sets) must be plain JSON-like trees of bounded depth.
MAX_LIST_ITEMS = 1 << 20  # tasks of a request, samples of a reply; also msgpack's max_array_len
MAX_MAP_ITEMS = 1 << 12  # keys of any mapping; also msgpack's max_map_len
MAX_TREE_DEPTH = 32  # nesting of metadata / rollout / reward-set mappings
MAX_NAME_CHARS = 1024  # tensor, host, worker, reward and finish-reason names
MAX_ID_CHARS = 4096  # task and sample ids, distributions, paths
MAX_TENSORS = 1 << 16  # tensors (array frames) of one weight bucket
MAX_DIMS = 8
MAX_DIM = 1 << 40
MAX_TOKENS = (1 << 31) - 1  # int32 token counts
INT64_MAX = (1 << 63) - 1


class WireError(ValueError):
    """A message that does not match its schema; it is dropped and counted, never executed.

    `reason` is a short fixed key (never text taken from the message) to count rejections by.
    """

    def __init__(self, message: str, reason: str = "invalid"):
        super().__init__(message)
        self.reason = reason


def _json_tree(value: Any, info: ValidationInfo) -> Any:
    """On decode, a free-form field must hold only JSON values (finite floats), nested at most MAX_TREE_DEPTH."""
    if not (info.context and info.context.get("wire")):
        return value  # built locally: whatever the sender's code put there
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_TREE_DEPTH:
            raise ValueError(f"nested deeper than {MAX_TREE_DEPTH} levels")
        if isinstance(node, dict):
            for key, item in node.items():
                if type(key) is not str:
                    raise ValueError(f"mapping key of type {type(key).__name__}")
                stack.append((item, depth + 1))
        elif isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)
        elif type(node) is float:
            if not math.isfinite(node):  # JSON has none; encode() turns them into null
                raise ValueError(f"{node} in a free-form field")
        elif node is not None and type(node) not in (str, int, bool):
            raise ValueError(f"value of type {type(node).__name__} in a free-form field")
    return value


Int64 = Annotated[int, Field(ge=-(1 << 63), le=INT64_MAX)]
Count = Annotated[int, Field(ge=0, le=INT64_MAX)]
TokenCount = Annotated[int, Field(ge=0, le=MAX_TOKENS)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Name = Annotated[str, Field(max_length=MAX_NAME_CHARS)]
Id = Annotated[str, Field(max_length=MAX_ID_CHARS)]
JsonDict = Annotated[dict[str, Any], Field(max_length=MAX_MAP_ITEMS), AfterValidator(_json_tree)]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: ClassVar[str]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class Task(BaseModel):
    """One prompt to sample from: made by envs/, scored by rewards/ against `answer`."""

    model_config = ConfigDict(extra="forbid")
    task_id: Id
    distribution: Id
    messages: Annotated[list[ChatMessage], FailFast(), Field(max_length=MAX_MAP_ITEMS)]
    answer: str = Field(description="Reference answer the rewards compare with; empty in label-free training (env.label_free).")
    metadata: JsonDict = Field(default_factory=dict)
    reward_set: Id = Field("default", description="Which of the run's reward sets scores this task (one per source).")


class Hello(Message):
    kind: ClassVar[str] = "hello"
    worker_name: Name = Field(description="Human-readable name (host:pid or the name given to `rl rollout`).")
    pid: Count
    host: Name


class Welcome(Message):
    kind: ClassVar[str] = "welcome"
    worker_id: Count = Field(description="Id the learner assigned; tags every sample of this worker.")
    model_path: Id = Field(description="Local HF folder of the initial policy (version 0).")
    rollout: JsonDict = Field(description="The run's RolloutConfig as a mapping.")
    reward_sets: dict[Name, Annotated[list[JsonDict], FailFast(), Field(max_length=MAX_MAP_ITEMS)]] = Field(
        max_length=MAX_MAP_ITEMS,
        description="Reward sets by name (one per task source): components (name, weight, parameters); a task names its set."
    )
    reward_modules: Annotated[list[Id], FailFast()] = Field(
        default_factory=list, max_length=MAX_MAP_ITEMS, description="Modules that register rewards by name."
    )
    seed: Int64
    run_dir: Id
    heartbeat_interval_s: FiniteFloat = Field(1.0, gt=0, description="How often to send a Heartbeat.")
    learner_timeout_s: FiniteFloat = Field(60.0, gt=0, description="Exit when the learner has been unreachable this long.")


class TensorMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name = Field(description="Hugging Face parameter name.")
    dtype: Literal["float32", "bfloat16", "float16"]
    shape: list[Annotated[int, Field(ge=0, le=MAX_DIM)]] = Field(max_length=MAX_DIMS)


class Weights(Message):
    """One bucket of a weight publication; frame i+1 holds tensors[i]'s bytes (C order)."""

    kind: ClassVar[str] = "weights"
    version: Count = Field(description="Policy version these weights are.")
    bucket: Count
    num_buckets: int = Field(ge=1, le=INT64_MAX)
    tensors: Annotated[list[TensorMeta], FailFast()] = Field(max_length=MAX_TENSORS)

    @model_validator(mode="before")
    @classmethod
    def _few_tensors(cls, data: Any) -> Any:
        # pydantic checks max_length only after validating every item; refuse a long list up front
        if isinstance(data, dict) and isinstance(data.get("tensors"), list) and len(data["tensors"]) > MAX_TENSORS:
            raise ValueError(f"{len(data['tensors'])} tensors in one bucket, more than {MAX_TENSORS}")
        return data

    @model_validator(mode="after")
    def _bucket_in_range(self) -> Weights:
        if self.bucket >= self.num_buckets:
            raise ValueError(f"bucket {self.bucket} of {self.num_buckets}")
        return self


class WeightsLoaded(Message):
    """W->L: the worker now holds `version`. Version 0, sent once right after its engine started, says that the
    engine is up with the weights from disk (load_seconds: the engine's start-up); the learner sends tasks only then."""

    kind: ClassVar[str] = "weights_loaded"
    worker_id: Count
    version: Count
    load_seconds: FiniteFloat = Field(ge=0, description="Time the worker spent loading buckets into its engine.")


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(ge=1, le=MAX_TOKENS)
    temperature: FiniteFloat = Field(ge=0)
    top_p: FiniteFloat = Field(gt=0, le=1)
    max_tokens: int = Field(ge=1, le=MAX_TOKENS)
    seed: Int64 | None = None


class Tasks(Message):
    kind: ClassVar[str] = "tasks"
    request_id: Count
    purpose: Literal["train", "eval"]
    min_version: Count = Field(description="The worker must hold at least this policy version to generate.")
    sampling: SamplingParams
    tasks: Annotated[list[Task], FailFast()] = Field(max_length=MAX_LIST_ITEMS)


def sample_prefix(worker_id: int, request_id: int) -> str:
    """What the ids of one request's samples start with (rollout/sampling.py adds -t{task index}-s{sample index})."""
    return f"w{worker_id}-r{request_id}"


def sample_id(worker_id: int, request_id: int, task_index: int, sample_index: int) -> str:
    """The id of sample `sample_index` of the request's task `task_index`: the learner checks it and groups by it."""
    return f"{sample_prefix(worker_id, request_id)}-t{task_index}-s{sample_index}"


class SampleMeta(BaseModel):
    """One generated completion; its token arrays are slices of the Samples frames."""

    model_config = ConfigDict(extra="forbid")
    sample_id: Id = Field(description="Unique: worker id, request id, task index, sample index (see `sample_id`).")
    task_id: Id
    distribution: Id
    prompt_len: TokenCount
    completion_len: TokenCount
    reward: FiniteFloat = Field(description="Weighted sum of the components.")
    reward_components: dict[Name, FiniteFloat] = Field(max_length=MAX_MAP_ITEMS)
    reward_failed: Annotated[list[Name], FailFast()] = Field(default_factory=list, max_length=MAX_MAP_ITEMS, description="Components that raised or timed out (scored on_error).")
    correct: bool | None = Field(None, description="Whether the answer is right, by the reward set's accuracy component (None: no such component).")
    finish_reason: Name
    policy_version: Count
    worker_id: Count
    text: str = Field(description="Decoded completion, for logs and evaluation tables.")


class RolloutTimings(BaseModel):
    """Where a worker's time on one request went (wall seconds)."""

    model_config = ConfigDict(extra="forbid")
    generate_seconds: FiniteFloat = Field(ge=0, description="Inside the engine's generate call.")
    score_seconds: FiniteFloat = Field(ge=0, description="Scoring the completions with the reward pool.")
    worker_seconds: FiniteFloat = Field(ge=0, description="From the Tasks message read to the Samples message ready.")
    peak_rss_bytes: Count | None = Field(None, description="The worker process's peak RSS so far (None: not given).")
    gpu_peak_bytes: Count | None = Field(None, description="The most GPU memory its PyTorch held so far (None: no GPU).")


class Samples(Message):
    """Frames: 1 prompt ids int32, 2 completion ids int32, 3 sampling logprobs float32, all samples concatenated."""

    kind: ClassVar[str] = "samples"
    request_id: Count
    purpose: Literal["train", "eval"]
    worker_id: Count
    samples: Annotated[list[SampleMeta], FailFast()] = Field(max_length=MAX_LIST_ITEMS)
    timings: RolloutTimings | None = Field(None, description="The worker's own account of the request (None: not given).")


class Shutdown(Message):
    kind: ClassVar[str] = "shutdown"
    reason: str


class WorkerFailed(Message):
    kind: ClassVar[str] = "worker_failed"
    worker_id: Count
    error: str


class Heartbeat(Message):
    """W->L every transport.heartbeat_interval_s, from a side connection of the worker's own thread,
    so it keeps coming while the worker generates or loads weights."""

    kind: ClassVar[str] = "heartbeat"
    worker_id: Count
    version: Count = Field(description="Policy version the worker holds.")


MESSAGE_TYPES: dict[str, type[Message]] = {
    m.kind: m for m in (Hello, Welcome, Weights, WeightsLoaded, Tasks, Samples, Shutdown, WorkerFailed, Heartbeat)
}

NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16, "int32": np.int32}
ITEM_SIZES = {"float32": 4, "float16": 2, "bfloat16": 2, "int32": 4}


def encode(message: Message, frames: list[Any] = ()) -> list[Any]:
    """Header frame plus the given buffers (numpy arrays, memoryviews, bytes), uncopied."""
    header = message.model_dump(mode="json")
    header["kind"] = message.kind
    header["schema"] = SCHEMA_VERSION
    packed = msgpack.packb(header, use_bin_type=True)
    if len(packed) > MAX_HEADER_BYTES:  # the receiver would drop it: fail loudly here instead
        raise WireError(f"{message.kind} header of {len(packed)} bytes exceeds {MAX_HEADER_BYTES}; send fewer items per message")
    return [packed, *frames]


def _short(value: Any, limit: int = 60) -> str:
    """repr of a value taken from a message, cut so a hostile value cannot flood a log line."""
    text = repr(value) if not isinstance(value, (str, bytes)) or len(value) <= limit else repr(value[:limit]) + "..."
    return text if len(text) <= limit + 5 else text[:limit] + "..."


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code}")


def decode(frames: list[Any]) -> tuple[Message, list[memoryview]]:
    """Validate a received multipart message; raises WireError, and only WireError, on anything unexpected.

    Order: frame count and header size, then msgpack with limits relative to the header's size (no
    container may claim more items than MAX_LIST_ITEMS / MAX_MAP_ITEMS, no bin or extension types),
    then schema version and kind, then the pydantic model in strict mode, then the array frames.
    """
    try:
        frames = list(frames)
    except TypeError:
        raise WireError("message is not a sequence of frames", "bad_frame") from None
    if not frames:
        raise WireError("empty message", "empty")
    if len(frames) > MAX_TENSORS + 1:
        raise WireError(f"message has {len(frames)} frames, more than any message kind carries", "payload_frames")
    try:
        views = [memoryview(f) for f in frames]
        views = [v if v.ndim == 1 and v.format == "B" else v.cast("B") if v.nbytes else memoryview(b"") for v in views]
    except (TypeError, ValueError, BufferError):
        raise WireError("a frame is not a contiguous bytes-like buffer", "bad_frame") from None
    head = views[0]
    if head.nbytes > MAX_HEADER_BYTES:
        raise WireError(f"header of {head.nbytes} bytes exceeds {MAX_HEADER_BYTES}", "oversized_header")
    try:
        header = msgpack.unpackb(
            head, raw=False, strict_map_key=True, use_list=True, ext_hook=_refuse_ext, max_bin_len=0, max_ext_len=0,
            max_str_len=MAX_HEADER_BYTES, max_array_len=MAX_LIST_ITEMS, max_map_len=MAX_MAP_ITEMS,
        )
    except Exception as err:  # noqa: BLE001 - msgpack raises ValueError, TypeError (unhashable keys), StackError, ExtraData, ...
        raise WireError(f"header is not msgpack: {type(err).__name__}: {_short(str(err), 120)}", "not_msgpack") from None
    if not isinstance(header, dict):
        raise WireError(f"header is a {type(header).__name__}, not a mapping", "not_mapping")
    schema = header.pop("schema", None)
    if type(schema) is not int or schema != SCHEMA_VERSION:  # not True, not 1.0
        raise WireError(
            f"schema version {_short(schema)}, expected {SCHEMA_VERSION} (mismatched versions of the framework?)", "schema_version"
        )
    kind = header.pop("kind", None)
    message_type = MESSAGE_TYPES.get(kind) if type(kind) is str else None
    if message_type is None:
        raise WireError(f"unknown message kind {_short(kind)}", "unknown_kind")
    try:
        message = message_type.model_validate(header, strict=True, context={"wire": True})
    except ValidationError as err:
        raise WireError(f"{kind} header does not match its schema: {_describe(err)}", "invalid_header") from None
    except Exception as err:  # noqa: BLE001 - a validator that failed in an unexpected way is still only a bad header
        raise WireError(f"{kind} header does not match its schema: {type(err).__name__}", "invalid_header") from None
    payload = views[1:]
    check_payload(message, payload)
    return message, payload


def _describe(err: ValidationError) -> str:
    """The first three errors as `location: message`, without the offending input."""
    shown = []
    for e in err.errors(include_url=False, include_context=False, include_input=False)[:3]:
        where = ".".join(str(part)[:40] for part in e["loc"]) or "message"
        shown.append(f"{where}: {e['msg']}")
    more = err.error_count() - len(shown)
    return "; ".join(shown) + (f" (and {more} more)" if more > 0 else "")


def check_payload(message: Message, payload: list[memoryview]) -> None:
    """Array frames against the header: count, exact byte sizes (exact integers, no overflow), token ids."""
    if isinstance(message, Weights):
        if len(payload) != len(message.tensors):
            raise WireError(f"weights bucket has {len(payload)} frames for {len(message.tensors)} tensors", "payload_frames")
        for meta, frame in zip(message.tensors, payload):
            expected = math.prod(meta.shape) * ITEM_SIZES[meta.dtype]  # Python ints: cannot wrap around like int64
            if frame.nbytes != expected:
                raise WireError(f"tensor {_short(meta.name)}: {frame.nbytes} bytes, expected {expected}", "payload_size")
    elif isinstance(message, Samples):
        if len(payload) != 3:
            raise WireError(f"samples message has {len(payload)} array frames, expected 3", "payload_frames")
        prompt_tokens = sum(s.prompt_len for s in message.samples)
        completion_tokens = sum(s.completion_len for s in message.samples)
        sizes = (prompt_tokens * 4, completion_tokens * 4, completion_tokens * 4)
        if tuple(f.nbytes for f in payload) != sizes:
            raise WireError(f"samples frames have {[f.nbytes for f in payload]} bytes, expected {list(sizes)}", "payload_size")
        for frame in payload[:2]:
            if frame.nbytes and np.frombuffer(frame, dtype=np.int32).min() < 0:
                raise WireError("samples carry a negative token id", "payload_values")
    elif payload:
        raise WireError(f"{message.kind} carries no array frames, got {len(payload)}", "payload_frames")
