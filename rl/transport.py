"""ZeroMQ endpoints: the learner's ROUTER and each worker's DEALER.

One connection per worker carries everything in both directions, so ZeroMQ's per-connection
ordering guarantees a worker sees weights before the tasks that need them. Hazards handled here:
- ROUTER silently drops messages to unknown identities; ROUTER_MANDATORY turns that into an error.
- High-water marks count messages, not bytes; weight buckets are few and large, so the limits are
  lifted (0) and memory is bounded by the protocol (one publication in flight per worker).
- Zero-copy sends (copy=False) let ZeroMQ read the tensor memory after send() returns; the sender
  waits on the MessageTracker before that memory may change (see `wait_sent`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter

import zmq

from rl.wire import Message, WireError, decode, encode

log = logging.getLogger(__name__)


class LearnerEndpoint:
    """The learner's single bound socket. Peers are addressed by their ZeroMQ identity."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.context = zmq.Context.instance()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.setsockopt(zmq.SNDHWM, 0)
        self.socket.setsockopt(zmq.RCVHWM, 0)
        self.socket.setsockopt(zmq.LINGER, 1000)
        if port:
            self.socket.bind(f"tcp://{host}:{port}")
        else:
            port = self.socket.bind_to_random_port(f"tcp://{host}")
        connect_host = socket.gethostname() if host in ("0.0.0.0", "*") else host
        self.address = f"tcp://{connect_host}:{port}"
        self.rejected: Counter[str] = Counter()
        self.trackers: list[zmq.MessageTracker] = []

    def send(self, identity: bytes, message: Message, frames: list = (), track: bool = False) -> None:
        parts = [identity, *encode(message, frames)]
        if track:
            tracker = self.socket.send_multipart(parts, copy=False, track=True)
            self.trackers.append(tracker)
        else:
            self.socket.send_multipart(parts, copy=False)

    def wait_sent(self, timeout_s: float = 600.0) -> None:
        """Block until ZeroMQ no longer reads any buffer sent with track=True."""
        deadline = time.monotonic() + timeout_s
        for tracker in self.trackers:
            tracker.wait(max(0.0, deadline - time.monotonic()))
        self.trackers.clear()

    def receive(self, timeout_ms: int) -> tuple[bytes, Message, list[memoryview]] | None:
        """Next valid message with its sender, or None on timeout."""
        received = receive_valid(self.socket, timeout_ms, self.rejected, has_identity=True)
        if received is None:
            return None
        identity, message, payload = received
        return identity, message, payload

    def close(self) -> None:
        self.socket.close()


class WorkerEndpoint:
    """A rollout worker's connection to the learner."""

    def __init__(self, address: str):
        self.context = zmq.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.SNDHWM, 0)
        self.socket.setsockopt(zmq.RCVHWM, 0)
        self.socket.setsockopt(zmq.LINGER, 1000)
        self.socket.setsockopt(zmq.IDENTITY, f"w-{socket.gethostname()}-{os.getpid()}".encode())
        self.socket.connect(address)
        self.rejected: Counter[str] = Counter()

    def send(self, message: Message, frames: list = ()) -> None:
        self.socket.send_multipart(encode(message, frames), copy=False)

    def receive(self, timeout_ms: int) -> tuple[Message, list[memoryview]] | None:
        """Next valid message from the learner, or None on timeout."""
        received = receive_valid(self.socket, timeout_ms, self.rejected, has_identity=False)
        if received is None:
            return None
        _, message, payload = received
        return message, payload

    def close(self) -> None:
        self.socket.close()


def receive_valid(sock: zmq.Socket, timeout_ms: int, rejected: Counter, has_identity: bool):
    """(identity or None, message, payload) of the next valid message, or None on timeout.

    Malformed messages are counted in `rejected` by reason and skipped: a bad peer costs a log
    line, never a crash.
    """
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        remaining = max(0, int((deadline - time.monotonic()) * 1000))
        if not sock.poll(remaining):
            return None
        parts = sock.recv_multipart(copy=False)
        identity = parts[0].bytes if has_identity else None
        try:
            message, payload = decode([p.buffer for p in parts[1 if has_identity else 0 :]])
        except WireError as err:
            rejected[str(err).split(":")[0]] += 1
            log.warning("dropped a malformed message from %r: %s", identity[:16] if identity else "the learner", err)
            continue
        return identity, message, payload
