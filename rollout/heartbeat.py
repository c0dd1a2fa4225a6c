"""The worker's heartbeat: a thread with its own connection to the learner.

It runs beside generation and weight loading (which hold the main thread for seconds), so:
- the learner hears from every live worker each `interval_s` and drops a silent one (a SIGKILLed
  or frozen worker) after `transport.heartbeat_timeout_s`;
- the worker notices a dead learner: the connection drops (the learner's process is gone) or
  ZeroMQ's own heartbeats time out (its host is gone); after `learner_timeout_s` without the
  connection the worker exits on its own, so no orphan outlives its learner.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from rl.wire import Heartbeat, encode

log = logging.getLogger("rollout")

# With CURVE a TCP connection is not yet a learner: count it only once the handshake succeeded.
CONNECTED_EVENTS = getattr(zmq, "EVENT_HANDSHAKE_SUCCEEDED", zmq.EVENT_CONNECTED)
LEARNER_GONE_EXIT_CODE = 75


class HeartbeatThread(threading.Thread):
    def __init__(
        self,
        address: str,
        worker_id: int,
        version: Callable[[], int],
        interval_s: float,
        learner_timeout_s: float,
        curve_keys: str | None = None,
        on_learner_lost: Callable[[str], None] | None = None,
    ):
        super().__init__(name="heartbeat", daemon=True)
        self.address = address
        self.worker_id = worker_id
        self.version = version
        self.interval_s = interval_s
        self.learner_timeout_s = learner_timeout_s
        self.curve_keys = curve_keys
        self.on_learner_lost = on_learner_lost or exit_now
        self.stopping = threading.Event()

    def run(self) -> None:
        context = zmq.Context.instance()
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 10)  # heartbeats are worthless once late: never queue many
        ivl_ms = max(100, int(self.interval_s * 1000))
        sock.setsockopt(zmq.HEARTBEAT_IVL, ivl_ms)  # ZeroMQ pings, answered by the learner's I/O thread
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(ivl_ms * 5, 3000))
        if self.curve_keys:
            from rl.security import secure_client

            secure_client(sock, self.curve_keys)
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | CONNECTED_EVENTS)
        sock.connect(self.address)
        lost_since: float | None = time.monotonic()  # not connected yet
        try:
            while not self.stopping.is_set():
                while monitor.poll(0):
                    event = recv_monitor_message(monitor)["event"]
                    if event & CONNECTED_EVENTS:
                        lost_since = None
                    elif event == zmq.EVENT_DISCONNECTED and lost_since is None:
                        lost_since = time.monotonic()
                        log.warning("worker %d: lost the connection to the learner at %s", self.worker_id, self.address)
                if lost_since is not None and time.monotonic() - lost_since > self.learner_timeout_s:
                    self.on_learner_lost(f"no connection to the learner at {self.address} for {self.learner_timeout_s:.0f} s")
                    return
                try:
                    sock.send_multipart(encode(Heartbeat(worker_id=self.worker_id, version=self.version())), flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass  # not connected: the monitor decides when that has lasted too long
                self.stopping.wait(self.interval_s)
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=0)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)


def exit_now(reason: str) -> None:
    """The learner is gone: leave at once, even if the main thread is inside vLLM."""
    log.error("%s; exiting", reason)
    logging.shutdown()
    os._exit(LEARNER_GONE_EXIT_CODE)
