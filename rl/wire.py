"""Every message that crosses a socket, declared in one place.

A message is a list of ZeroMQ frames: frame 0 is a msgpack header (a mapping with `kind`,
`schema` and the fields below), the other frames are raw array bytes described by the header.
Nothing is ever pickled: a header is validated against its pydantic model before use, and
array frames are reinterpreted with numpy only after their sizes are checked.

Direction and order (learner L, worker W, one DEALER->ROUTER connection per worker):
    W->L Hello, L->W Welcome, L->W Weights* (one per bucket) ... L->W Tasks ... W->L Samples,
    W->L WeightsLoaded after the last bucket of a version, L->W Shutdown.
ZeroMQ keeps the order of messages on one connection, so a worker always sees the weights of
version v before the tasks that require v.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import msgpack
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1
MAX_HEADER_BYTES = 16 * 1024 * 1024


class WireError(ValueError):
    """A message that does not match its schema; it is dropped and counted, never executed."""


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
    task_id: str
    distribution: str
    messages: list[ChatMessage]
    answer: str = Field(description="Reference answer the rewards compare with.")
    metadata: dict[str, Any] = Field(default_factory=dict)
    reward_set: str = Field("default", description="Which of the run's reward sets scores this task (one per source).")


class Hello(Message):
    kind: ClassVar[str] = "hello"
    worker_name: str = Field(description="Human-readable name (host:pid or the name given to `rl rollout`).")
    pid: int
    host: str


class Welcome(Message):
    kind: ClassVar[str] = "welcome"
    worker_id: int = Field(description="Id the learner assigned; tags every sample of this worker.")
    model_path: str = Field(description="Local HF folder of the initial policy (version 0).")
    rollout: dict[str, Any] = Field(description="The run's RolloutConfig as a mapping.")
    reward_sets: dict[str, list[dict[str, Any]]] = Field(
        description="Reward sets by name (one per task source): components (name, weight, parameters); a task names its set."
    )
    reward_modules: list[str] = Field(default_factory=list, description="Modules that register rewards by name.")
    seed: int
    run_dir: str


class TensorMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Hugging Face parameter name.")
    dtype: Literal["float32", "bfloat16", "float16"]
    shape: list[int]


class Weights(Message):
    """One bucket of a weight publication; frame i+1 holds tensors[i]'s bytes (C order)."""

    kind: ClassVar[str] = "weights"
    version: int = Field(ge=0, description="Policy version these weights are.")
    bucket: int = Field(ge=0)
    num_buckets: int = Field(ge=1)
    tensors: list[TensorMeta]


class WeightsLoaded(Message):
    kind: ClassVar[str] = "weights_loaded"
    worker_id: int
    version: int
    load_seconds: float = Field(description="Time the worker spent loading buckets into its engine.")


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(ge=1)
    temperature: float = Field(ge=0)
    top_p: float = Field(gt=0, le=1)
    max_tokens: int = Field(ge=1)
    seed: int | None = None


class Tasks(Message):
    kind: ClassVar[str] = "tasks"
    request_id: int
    purpose: Literal["train", "eval"]
    min_version: int = Field(ge=0, description="The worker must hold at least this policy version to generate.")
    sampling: SamplingParams
    tasks: list[Task]


class SampleMeta(BaseModel):
    """One generated completion; its token arrays are slices of the Samples frames."""

    model_config = ConfigDict(extra="forbid")
    sample_id: str = Field(description="Unique: worker id, request id, task index, sample index.")
    task_id: str
    distribution: str
    prompt_len: int = Field(ge=0)
    completion_len: int = Field(ge=0)
    reward: float = Field(description="Weighted sum of the components.")
    reward_components: dict[str, float]
    reward_failed: list[str] = Field(default_factory=list, description="Components that raised or timed out (scored on_error).")
    correct: bool | None = Field(None, description="Whether the answer is right, by the reward set's accuracy component (None: no such component).")
    finish_reason: str
    policy_version: int
    worker_id: int
    text: str = Field(description="Decoded completion, for logs and evaluation tables.")


class Samples(Message):
    """Frames: 1 prompt ids int32, 2 completion ids int32, 3 sampling logprobs float32, all samples concatenated."""

    kind: ClassVar[str] = "samples"
    request_id: int
    purpose: Literal["train", "eval"]
    worker_id: int
    samples: list[SampleMeta]


class Shutdown(Message):
    kind: ClassVar[str] = "shutdown"
    reason: str


class WorkerFailed(Message):
    kind: ClassVar[str] = "worker_failed"
    worker_id: int
    error: str


MESSAGE_TYPES: dict[str, type[Message]] = {
    m.kind: m for m in (Hello, Welcome, Weights, WeightsLoaded, Tasks, Samples, Shutdown, WorkerFailed)
}

NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16, "int32": np.int32}
ITEM_SIZES = {"float32": 4, "float16": 2, "bfloat16": 2, "int32": 4}


def encode(message: Message, frames: list[Any] = ()) -> list[Any]:
    """Header frame plus the given buffers (numpy arrays, memoryviews, bytes), uncopied."""
    header = message.model_dump(mode="json")
    header["kind"] = message.kind
    header["schema"] = SCHEMA_VERSION
    return [msgpack.packb(header, use_bin_type=True), *frames]


def decode(frames: list[Any]) -> tuple[Message, list[memoryview]]:
    """Validate a received multipart message; raises WireError on anything unexpected."""
    if not frames:
        raise WireError("empty message")
    head = memoryview(frames[0])
    if head.nbytes > MAX_HEADER_BYTES:
        raise WireError(f"header of {head.nbytes} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(head, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as err:
        raise WireError(f"header is not msgpack: {err}") from None
    if not isinstance(header, dict):
        raise WireError(f"header is a {type(header).__name__}, not a mapping")
    schema = header.pop("schema", None)
    if schema != SCHEMA_VERSION:
        raise WireError(f"schema version {schema!r}, expected {SCHEMA_VERSION} (mismatched versions of the framework?)")
    kind = header.pop("kind", None)
    message_type = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if message_type is None:
        raise WireError(f"unknown message kind {kind!r}")
    try:
        message = message_type.model_validate(header)
    except ValidationError as err:
        raise WireError(f"{kind} header does not match its schema: {err.errors()[:3]}") from None
    payload = [memoryview(f) for f in frames[1:]]
    check_payload(message, payload)
    return message, payload


def check_payload(message: Message, payload: list[memoryview]) -> None:
    if isinstance(message, Weights):
        if len(payload) != len(message.tensors):
            raise WireError(f"weights bucket has {len(payload)} frames for {len(message.tensors)} tensors")
        for meta, frame in zip(message.tensors, payload):
            expected = int(np.prod(meta.shape, dtype=np.int64)) * ITEM_SIZES[meta.dtype]
            if frame.nbytes != expected:
                raise WireError(f"tensor {meta.name}: {frame.nbytes} bytes, expected {expected}")
    elif isinstance(message, Samples):
        if len(payload) != 3:
            raise WireError(f"samples message has {len(payload)} array frames, expected 3")
        prompt_tokens = sum(s.prompt_len for s in message.samples)
        completion_tokens = sum(s.completion_len for s in message.samples)
        sizes = (prompt_tokens * 4, completion_tokens * 4, completion_tokens * 4)
        if tuple(f.nbytes for f in payload) != sizes:
            raise WireError(f"samples frames have {[f.nbytes for f in payload]} bytes, expected {list(sizes)}")
    elif payload:
        raise WireError(f"{message.kind} carries no array frames, got {len(payload)}")
