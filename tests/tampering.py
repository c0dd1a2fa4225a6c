"""Ways a worker can lie in a reply: each takes an honest Samples header and its three frames and returns a
tampered copy that still passes the wire's schema. Shared by the unit tests of rl/replies.py, the coordinator
tests and the stand-in worker of the live test (tests/tampering_worker.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rl.wire import Samples, Tasks

NEVER_SENT_TASK = "never-sent-task"


@dataclass
class Item:
    """One sample of a reply: its header entry and its slices of the frames."""

    meta: object
    prompt: np.ndarray
    completion: np.ndarray
    logprobs: np.ndarray


def split(header: Samples, frames: list[np.ndarray]) -> list[Item]:
    prompts, completions, logprobs = (np.asarray(f) for f in frames)
    items, p, c = [], 0, 0
    for meta in header.samples:
        items.append(Item(meta.model_copy(), prompts[p:p + meta.prompt_len], completions[c:c + meta.completion_len],
                          logprobs[c:c + meta.completion_len]))
        p, c = p + meta.prompt_len, c + meta.completion_len
    return items


def join(header: Samples, items: list[Item]) -> tuple[Samples, list[np.ndarray]]:
    metas = [i.meta.model_copy(update={"prompt_len": len(i.prompt), "completion_len": len(i.completion)}) for i in items]
    frames = [np.concatenate([i.prompt for i in items] or [np.zeros(0)]).astype(np.int32),
              np.concatenate([i.completion for i in items] or [np.zeros(0)]).astype(np.int32),
              np.concatenate([i.logprobs for i in items] or [np.zeros(0)]).astype(np.float32)]
    return header.model_copy(update={"samples": metas}), frames


def with_meta(item: Item, **changes) -> Item:
    return Item(item.meta.model_copy(update=changes), item.prompt, item.completion, item.logprobs)


def group_of_one(items: list[Item], request: Tasks) -> list[Item]:
    """The first task keeps one of its samples."""
    n = request.sampling.n
    return items[:1] + items[n:]


def extra_sample(items: list[Item], request: Tasks) -> list[Item]:
    """One sample more for the last task, under a fresh id."""
    last = items[-1]
    return items + [with_meta(last, sample_id=last.meta.sample_id.rsplit("-s", 1)[0] + f"-s{request.sampling.n}")]


def unknown_task(items: list[Item], request: Tasks) -> list[Item]:
    return [with_meta(items[0], task_id=NEVER_SENT_TASK), *items[1:]]


def future_version(items: list[Item], request: Tasks) -> list[Item]:
    return [with_meta(i, policy_version=999) for i in items]


def wrong_prompt(items: list[Item], request: Tasks) -> list[Item]:
    """Every sample of the first task carries its prompt less the first token (still consistent within the task)."""
    n = request.sampling.n
    return [Item(i.meta, i.prompt[1:], i.completion, i.logprobs) for i in items[:n]] + items[n:]


def too_long(items: list[Item], request: Tasks) -> list[Item]:
    """The first completion padded to 50 tokens past max_tokens."""
    first, length = items[0], request.sampling.max_tokens + 50
    token = int(first.completion[-1]) if len(first.completion) else 0
    completion = np.concatenate([first.completion, np.full(length - len(first.completion), token, np.int32)])
    logprobs = np.concatenate([first.logprobs, np.full(length - len(first.logprobs), -1.0, np.float32)])
    return [Item(first.meta, first.prompt, completion, logprobs), *items[1:]]


def duplicate_ids(items: list[Item], request: Tasks) -> list[Item]:
    return [items[0], with_meta(items[1], sample_id=items[0].meta.sample_id), *items[2:]]


def split_group(items: list[Item], request: Tasks) -> list[Item]:
    """The first sample renamed into a group of its own (groups are rebuilt from sample ids)."""
    first = items[0]
    return [with_meta(first, sample_id=first.meta.sample_id.rsplit("-s", 1)[0] + "-alone-s0"), *items[1:]]


def wrong_worker(items: list[Item], request: Tasks) -> list[Item]:
    return [with_meta(items[0], worker_id=items[0].meta.worker_id + 1), *items[1:]]


def wrong_distribution(items: list[Item], request: Tasks) -> list[Item]:
    return [with_meta(items[0], distribution="made-up"), *items[1:]]


def mixed_versions(items: list[Item], request: Tasks) -> list[Item]:
    return [with_meta(items[0], policy_version=items[0].meta.policy_version + 1), *items[1:]]


def out_of_vocabulary(items: list[Item], request: Tasks) -> list[Item]:
    first = items[0]
    return [Item(first.meta, first.prompt, np.full(len(first.completion), 10**9, np.int32), first.logprobs), *items[1:]]


def nan_logprobs(items: list[Item], request: Tasks) -> list[Item]:
    first = items[0]
    return [Item(first.meta, first.prompt, first.completion, np.full(len(first.logprobs), np.nan, np.float32)), *items[1:]]


TAMPERINGS: dict[str, Callable[[list[Item], Tasks], list[Item]]] = {
    f.__name__: f for f in (group_of_one, extra_sample, unknown_task, future_version, wrong_prompt, too_long, duplicate_ids,
                            split_group, wrong_worker, wrong_distribution, mixed_versions, out_of_vocabulary, nan_logprobs)
}

# the reason rl/replies.py must give each (the live test's kinds are the list, plus split_group)
EXPECTED_REASON = {
    "group_of_one": "sample_count", "extra_sample": "sample_count", "unknown_task": "unknown_task",
    "future_version": "policy_version", "wrong_prompt": "prompt_ids", "too_long": "too_long",
    "duplicate_ids": "duplicate_sample_id", "split_group": "sample_id", "wrong_worker": "wrong_request",
    "wrong_distribution": "distribution",
    "mixed_versions": "policy_version", "out_of_vocabulary": "token_range", "nan_logprobs": "non_finite_logprobs",
}
LIVE_KINDS = ("group_of_one", "extra_sample", "unknown_task", "future_version", "wrong_prompt", "too_long", "duplicate_ids",
              "split_group")


def tamper(kind: str, header: Samples, frames: list[np.ndarray], request: Tasks) -> tuple[Samples, list[np.ndarray]]:
    """`kind`'s tampered copy of an honest reply to `request` (needs at least 2 samples)."""
    return join(header, TAMPERINGS[kind](split(header, frames), request))
