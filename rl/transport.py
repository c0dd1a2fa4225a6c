"""ZeroMQ endpoints: the learner's ROUTER and each worker's DEALER.

One connection per worker carries everything in both directions, so ZeroMQ's per-connection
ordering guarantees a worker sees weights before the tasks that need them. Hazards handled here:
- ROUTER silently drops messages to unknown identities; ROUTER_MANDATORY turns that into an error.
- High-water marks count messages, not bytes. Weight buckets are few and large, so the limits on
  what the learner sends and a worker receives are lifted (0): memory is bounded by the protocol
  (one publication in flight per worker). What the learner receives is bounded by `ReceiveLimits`
  (rl/replies.py), derived from the run's config: workers send samples, never weights.
- Zero-copy sends (copy=False) let ZeroMQ read the tensor memory after send() returns; the sender
  waits on the MessageTracker before that memory may change (see `wait_sent`).
- The learner's main thread leaves the socket alone for a whole update or checkpoint (seconds to
  minutes), while every worker heartbeats each second. Unread, a connection reaches RCVHWM; ZeroMQ
  then stops reading it, so the worker's ZMTP pings go unanswered, it drops the connection, and
  libzmq 4.3.5 aborts the learner (`Assertion failed: !_io_error`, stream_engine_base.cpp:310).
  So a pump thread reads what arrives whenever the main thread is not using the socket (`Inbox`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter, deque

import zmq

from rl.config import Config
from rl.replies import ReceiveLimits, receive_limits
from rl.security import SecurityError, is_loopback, secure_client, secure_server
from rl.wire import Message, WireError, decode, encode

log = logging.getLogger(__name__)


class LearnerEndpoint:
    """The learner's single bound socket. Peers are addressed by their ZeroMQ identity."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, curve_keys: str | None = None, allow_insecure: bool = False,
                 limits: ReceiveLimits | None = None):
        """`limits`: what workers may send (`receive_limits(config, ...)`); None: those of a run of the default config."""
        # Checked here as well as in the config: nothing binds a reachable port without keys or an explicit opt-in.
        if not curve_keys and not allow_insecure and not is_loopback(host):
            raise SecurityError(
                f"refusing to bind {host} without encryption: set transport.curve_keys (see `rl keys`) "
                "or transport.allow_insecure_network=true"
            )
        self.context = zmq.Context.instance()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # Workers send samples, never tensors: a larger frame is an attack or a bug, and ZeroMQ drops that peer.
        self.limits = limits or receive_limits(Config())
        self.socket.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)
        self.socket.setsockopt(zmq.RCVHWM, self.limits.receive_hwm)
        self.socket.setsockopt(zmq.SNDHWM, 0)
        self.socket.setsockopt(zmq.LINGER, 1000)
        if curve_keys:
            try:
                self.security_description = secure_server(self.socket, curve_keys)
            except Exception:
                self.socket.close(linger=0)
                raise
        elif is_loopback(host):
            self.security_description = "no encryption (loopback only)"
        else:
            self.security_description = "NO ENCRYPTION: allow_insecure_network is set, anyone who reaches this port can join"
        if port:
            self.socket.bind(f"tcp://{host}:{port}")
        else:
            port = self.socket.bind_to_random_port(f"tcp://{host}")
        connect_host = socket.gethostname() if host in ("0.0.0.0", "*") else host
        self.address = f"tcp://{connect_host}:{port}"
        self.rejected: Counter[str] = Counter()
        self.trackers: list[zmq.MessageTracker] = []
        self.inbox = Inbox(self.socket, max_bytes=self.limits.receive_hwm * self.limits.max_message_bytes)

    def send(self, identity: bytes, message: Message, frames: list = (), track: bool = False) -> None:
        parts = [identity, *encode(message, frames)]
        with self.inbox.lock:
            if track:
                tracker = self.socket.send_multipart(parts, copy=False, track=True)
                self.trackers.append(tracker)
            else:
                self.socket.send_multipart(parts, copy=False)

    def wait_sent(self, timeout_s: float = 600.0) -> None:
        """Block until ZeroMQ no longer reads any buffer sent with track=True."""
        self.wait_trackers(self.take_trackers(), timeout_s)

    def take_trackers(self) -> list[zmq.MessageTracker]:
        """The trackers of the sends so far; later sends start a new list."""
        trackers, self.trackers = self.trackers, []
        return trackers

    @staticmethod
    def wait_trackers(trackers: list[zmq.MessageTracker], timeout_s: float = 600.0) -> None:
        deadline = time.monotonic() + timeout_s
        for tracker in trackers:
            tracker.wait(max(0.0, deadline - time.monotonic()))

    def receive(self, timeout_ms: int) -> tuple[bytes, Message, list[memoryview]] | None:
        """Next valid message with its sender, or None on timeout."""
        with self.inbox.lock:
            received = receive_valid(self.inbox, timeout_ms, self.rejected, has_identity=True)
        if received is None:
            return None
        identity, message, payload = received
        return identity, message, payload

    def has_pending(self) -> bool:
        """Whether a message is waiting to be read."""
        with self.inbox.lock:
            return bool(self.inbox.poll(0))

    def close(self) -> None:
        self.inbox.stop()
        self.socket.close()


class Inbox:
    """The learner socket's messages, read as they arrive even while the main thread computes.

    A pump thread takes the socket only when the main thread is not using it (`lock`; ZeroMQ allows
    a socket to move between threads across a full memory barrier) and moves whatever has arrived
    into a queue, up to `max_bytes` (what ZeroMQ itself would have queued for one connection at
    RCVHWM). Past that it stops reading and ZeroMQ's high-water mark applies again: a flooding peer
    still cannot grow the learner's memory. The main thread reads through `poll`/`recv_multipart`,
    the queue first, so the order of messages is ZeroMQ's.
    """

    def __init__(self, sock: zmq.Socket, max_bytes: int, interval_s: float = 0.1):
        self.socket = sock
        self.max_bytes = max_bytes
        self.lock = threading.Lock()
        self.queued: deque[list[zmq.Frame]] = deque()
        self.queued_bytes = 0
        self.stopping = threading.Event()
        self.pump = threading.Thread(target=self._pump, args=(interval_s,), name="learner-inbox", daemon=True)
        self.pump.start()

    def _pump(self, interval_s: float) -> None:
        while not self.stopping.wait(interval_s):
            if self.lock.acquire(blocking=False):
                try:
                    if self.socket.closed:  # closed without `stop` (a caller that closed the socket itself)
                        return
                    self.read_arrived()
                except zmq.ZMQError:  # closed, or its context terminated, under the pump: nothing left to read
                    return
                finally:
                    self.lock.release()

    def read_arrived(self) -> int:
        """Move what has arrived into the queue, within `max_bytes`; the caller holds `lock`. Returns the count."""
        moved = 0
        while self.queued_bytes < self.max_bytes and not self.stopping.is_set() and self.socket.poll(0):
            parts = self.socket.recv_multipart(copy=False)
            self.queued.append(parts)
            self.queued_bytes += sum(len(p) for p in parts)
            moved += 1
        return moved

    def poll(self, timeout_ms: int) -> bool:
        return bool(self.queued) or bool(self.socket.poll(timeout_ms))

    def recv_multipart(self, copy: bool = False) -> list[zmq.Frame]:
        if not self.queued:
            return self.socket.recv_multipart(copy=copy)
        parts = self.queued.popleft()
        self.queued_bytes -= sum(len(p) for p in parts)
        return parts

    def stop(self) -> None:
        self.stopping.set()
        self.pump.join(timeout=5)


class WorkerEndpoint:
    """A rollout worker's connection to the learner."""

    def __init__(self, address: str, curve_keys: str | None = None, identity: bytes | None = None):
        self.context = zmq.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.SNDHWM, 0)
        self.socket.setsockopt(zmq.RCVHWM, 0)
        self.socket.setsockopt(zmq.LINGER, 1000)
        self.socket.setsockopt(zmq.IDENTITY, identity or f"w-{socket.gethostname()}-{os.getpid()}".encode())
        self.security_description = "no encryption"
        if curve_keys:  # a DIR made by `rl keys`, or DIR/NAME.key_secret for an extra worker key
            try:
                self.security_description = secure_client(self.socket, curve_keys)
            except Exception:
                self.socket.close(linger=0)
                raise
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


def receive_valid(sock: zmq.Socket, timeout_ms: int, rejected: Counter, has_identity: bool, log_every: int = 100):
    """(identity or None, message, payload) of the next valid message, or None on timeout.

    Malformed messages are counted in `rejected` by a short fixed reason (`WireError.reason`, or
    "no_identity" / "decode_error") and skipped: a bad peer never crashes the caller. The first of each
    reason is logged at WARNING, then every `log_every`-th (the others at DEBUG), so a flood of garbage
    cannot flood the log. A flood cannot hold the caller past its timeout either: after a rejected
    message past the deadline, this returns None.
    """
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        remaining = max(0, int((deadline - time.monotonic()) * 1000))
        if not sock.poll(remaining):
            return None
        parts = sock.recv_multipart(copy=False)
        identity = None
        try:
            if has_identity:
                if len(parts) < 2:  # a ROUTER prepends the identity: a lone frame is not a message
                    raise WireError(f"message of {len(parts)} frame(s) without an identity and a header", "no_identity")
                identity = parts[0].bytes
                parts = parts[1:]
            message, payload = decode([p.buffer for p in parts])
        except Exception as err:  # WireError by design; anything else would be a bug in decode, still never a crash
            reason = err.reason if isinstance(err, WireError) else "decode_error"
            rejected[reason] += 1
            count = rejected[reason]
            level = logging.WARNING if count == 1 or count % max(1, log_every) == 0 else logging.DEBUG
            if log.isEnabledFor(level):
                source = repr(identity[:32]) if identity is not None else "the learner" if not has_identity else "a peer"
                detail = str(err) if isinstance(err, WireError) else f"{type(err).__name__}: {err}"
                log.log(
                    level, "dropped malformed message #%d of reason %r (%d dropped in all) from %s: %.300s%s",
                    count, reason, sum(rejected.values()), source, detail,
                    "" if level == logging.DEBUG else f" (further ones logged every {log_every}th)" if count == 1 else "",
                    exc_info=not isinstance(err, WireError),
                )
            if time.monotonic() >= deadline:
                return None
            continue
        return identity, message, payload
