"""Reward functions run in a pool of worker processes, each call under a timeout.

Why processes, not threads: a verifier that hangs cannot be stopped inside a thread, and
math-verify's own timeout uses `signal.alarm`, which works only in a process's main thread
(in a thread it silently does nothing and a hard input stalls the scorer). Here every call runs in
the main thread of a child process; the parent waits at most `timeout_s` for its answer and,
past that, kills the child and starts a new one. A call that raises or times out scores the
component's failure value, is counted, and its first traceback is logged once per component.

Only plain data crosses the pipes (completion text, the task as a dict, numbers): reward specs are
re-resolved by name in each child, so nothing from a model's output is ever executed.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

log = logging.getLogger("rewards")

READY = "ready"
START_TIMEOUT_S = 120.0


RewardSets = dict[str, list[dict[str, Any]]]  # reward-set name -> component specs


@dataclass
class ScoredSample:
    total: float
    components: dict[str, float]
    failed: list[str] = field(default_factory=list)  # components that raised or timed out
    correct: bool | None = None  # by the set's accuracy component


def as_reward_sets(specs: list[dict[str, Any]] | RewardSets) -> RewardSets:
    """One unnamed set (a plain list of specs) scores every task; named sets are chosen by task.reward_set."""
    return dict(specs) if isinstance(specs, dict) else {"default": list(specs)}


def _child_main(conn: Connection, sets: RewardSets, modules: list[str]) -> None:
    """Child loop: resolve the reward specs once, then answer (index, (set, component), args) calls."""
    from rewards.registry import resolve_components

    components = {(set_name, c.name): c for set_name, specs in sets.items() for c in resolve_components(specs, modules)}
    conn.send(READY)
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        for call_id, name, completions, task_dicts, contexts in request:  # a chunk; one answer per call
            try:
                values = components[name].score(completions, task_dicts, contexts)
                conn.send((call_id, True, values))
            except Exception:  # a user's reward may raise anything; it becomes the failure value
                conn.send((call_id, False, traceback.format_exc(limit=8)))


class _Child:
    def __init__(self, context: mp.context.BaseContext, specs: RewardSets, modules: list[str]):
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=_child_main, args=(child_conn, specs, modules), daemon=True)
        self.process.start()
        child_conn.close()
        self.calls: list[tuple[tuple[int, ...], tuple[str, str]]] = []  # sent, not yet answered, in order
        self.deadline = 0.0
        self.ready = False
        self.started = time.monotonic()

    def kill(self) -> None:
        self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class RewardPool:
    """Score (completion, task) pairs with every component of the task's reward set, in `num_processes` children."""

    def __init__(
        self, specs: list[dict[str, Any]] | RewardSets, num_processes: int = 2, timeout_s: float = 5.0, chunk: int = 16,
        modules: list[str] = (),
    ):
        from rewards.registry import resolve_components

        self.specs = as_reward_sets(specs)
        self.modules = list(modules)
        # resolved here first, so a bad spec fails before any child starts
        self.components = {name: resolve_components(set_specs, self.modules) for name, set_specs in self.specs.items()}
        self.timeout_s = timeout_s
        self.chunk = chunk  # calls per message: one pipe round trip costs more than a typical verify
        self.context = mp.get_context("spawn")
        self.children = [_Child(self.context, self.specs, self.modules) for _ in range(max(1, num_processes))]
        self.errors: Counter[str] = Counter()
        self.logged: set[tuple[str, str]] = set()

    def score(
        self,
        completions: list[str],
        tasks: list[dict[str, Any]],
        contexts: list[dict[str, Any]],
        groups: list[list[int]] | None = None,
    ) -> list[ScoredSample]:
        """Every component of each sample's set; batch components once per group (default: one group).

        A group is the samples of one prompt, so all its samples share a reward set.
        """
        groups = groups or [list(range(len(completions)))]
        set_of = [self.set_for(task) for task in tasks]
        calls: list[tuple[tuple[int, ...], tuple[str, str]]] = []
        for set_name, components in self.components.items():
            for component in components:
                key = (set_name, component.name)
                if component.batch:
                    calls.extend((tuple(g), key) for g in groups if set_of[g[0]] == set_name)
                else:
                    calls.extend(((i,), key) for i in range(len(completions)) if set_of[i] == set_name)
        values: dict[tuple[int, str], float] = {}
        failed: dict[int, list[str]] = {i: [] for i in range(len(completions))}
        pending = list(reversed(calls))
        while pending or any(c.calls for c in self.children):
            for child in self.children:
                if child.ready and not child.calls and pending:
                    child.calls = [pending.pop() for _ in range(min(self.chunk, len(pending)))]
                    child.deadline = time.monotonic() + self.timeout_s  # restarted at every answer
                    child.conn.send([
                        (indices, name, [completions[i] for i in indices], [tasks[i] for i in indices], [contexts[i] for i in indices])
                        for indices, name in child.calls
                    ])
            deadlines = [c.deadline if c.ready else c.started + START_TIMEOUT_S for c in self.children if c.calls or not c.ready]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else 0.0
            by_conn = {c.conn: c for c in self.children if c.calls or not c.ready}
            for conn in wait(list(by_conn), timeout=timeout):
                self._receive(by_conn[conn], values, failed, pending)
            now = time.monotonic()
            for child in list(self.children):
                if child.calls and now >= child.deadline:
                    self._fail(*child.calls[0], f"timed out after {self.timeout_s} s", values, failed)
                    pending.extend(reversed(child.calls[1:]))  # the rest of its chunk never ran
                    self._replace(child)
                elif not child.ready and now >= child.started + START_TIMEOUT_S:
                    raise RuntimeError(f"a reward process did not start within {START_TIMEOUT_S:.0f} s")
        return [self._combine(i, set_of[i], values, failed[i]) for i in range(len(completions))]

    def set_for(self, task: dict[str, Any]) -> str:
        if len(self.specs) == 1:
            return next(iter(self.specs))
        name = task.get("reward_set", "default")
        if name not in self.specs:
            raise KeyError(f"task {task.get('task_id')} asks for reward set {name!r}; this run has {sorted(self.specs)}")
        return name

    def _receive(self, child: _Child, values, failed, pending) -> None:
        """Take every answer the child has ready; the deadline restarts after each one."""
        while True:
            try:
                message = child.conn.recv()
            except EOFError:  # the child died (a reward called os._exit, or it could not start)
                if not child.calls:
                    raise RuntimeError("a reward process exited while starting; see the traceback above") from None
                self._fail(*child.calls[0], "the reward process exited", values, failed)
                pending.extend(reversed(child.calls[1:]))
                self._replace(child)
                return
            if message == READY:
                child.ready = True
                return
            _, ok, result = message
            indices, name = child.calls.pop(0)
            child.deadline = time.monotonic() + self.timeout_s
            if ok and len(result) == len(indices):
                values.update({(i, name): v for i, v in zip(indices, result)})
            else:
                error = result if not ok else f"returned {len(result)} values for {len(indices)} samples"
                self._fail(indices, name, error, values, failed)
            if not child.calls or not child.conn.poll():
                return

    def _fail(self, indices: tuple[int, ...], key: tuple[str, str], error: str, values, failed) -> None:
        set_name, name = key
        component = next(c for c in self.components[set_name] if c.name == name)
        for index in indices:
            values[(index, key)] = component.on_error
            failed[index].append(name)
        self.errors[name] += len(indices)
        if key not in self.logged:
            self.logged.add(key)
            log.warning("reward %r failed (scored %s; later failures are only counted): %s", name, component.on_error, error)

    def _replace(self, child: _Child) -> None:
        child.kill()
        position = self.children.index(child)
        self.children[position] = _Child(self.context, self.specs, self.modules)

    def _combine(self, index: int, set_name: str, values, failed: list[str]) -> ScoredSample:
        from rewards.registry import combine, is_correct

        components = self.components[set_name]
        total, logged = combine(components, {c.name: values[(index, (set_name, c.name))] for c in components})
        return ScoredSample(total, logged, failed, is_correct(components, logged))

    def close(self) -> None:
        for child in self.children:
            try:
                child.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            child.process.join(timeout=2)
            if child.process.is_alive():
                child.kill()
