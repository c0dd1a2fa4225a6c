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
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter

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

    def send(self, identity: bytes, message: Message, frames: list = (), track: bool = False) -> None:
        parts = [identity, *encode(message, frames)]
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
        received = receive_valid(self.socket, timeout_ms, self.rejected, has_identity=True)
        if received is None:
            return None
        identity, message, payload = received
        return identity, message, payload

    def has_pending(self) -> bool:
        """Whether a message is waiting to be read."""
        return bool(self.socket.poll(0))

    def close(self) -> None:
        self.socket.close()


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
