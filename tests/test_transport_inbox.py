"""The learner keeps reading its socket while its main thread computes (rl/transport.py `Inbox`).

Without that, a worker's heartbeats fill the connection's RCVHWM during a long update, ZeroMQ
stops reading it, the worker's ZMTP pings time out, and libzmq aborts the learner process.
"""

from __future__ import annotations

import time

import zmq
from zmq.utils.monitor import recv_monitor_message

from rl.replies import ReceiveLimits
from rl.transport import LearnerEndpoint
from rl.wire import Heartbeat, encode


def heartbeating_dealer(address: str) -> tuple[zmq.Socket, zmq.Socket]:
    """A worker-like DEALER with fast ZMTP heartbeats, and a monitor of its disconnections."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.HEARTBEAT_IVL, 100)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 300)  # no answer to a ping for 0.3 s: the connection is dropped
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    sock.connect(address)
    return sock, monitor


def disconnections(monitor: zmq.Socket) -> int:
    count = 0
    while monitor.poll(0):
        count += recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
    return count


def test_a_busy_learner_keeps_a_heartbeating_worker_connected_and_loses_no_message():
    learner = LearnerEndpoint(limits=ReceiveLimits(max_message_bytes=4096, receive_hwm=2))
    worker, monitor = heartbeating_dealer(learner.address)
    try:
        for version in range(40):  # 1 s of messages, 20x the high-water mark, while the learner never reads
            worker.send_multipart(encode(Heartbeat(worker_id=0, version=version)))
            time.sleep(0.025)
        time.sleep(0.8)  # well past the worker's 0.3 s ping timeout
        assert disconnections(monitor) == 0, "the worker dropped its connection to a busy learner"
        versions = []
        while (received := learner.receive(timeout_ms=200)) is not None:
            versions.append(received[1].version)
        assert versions == list(range(40))
    finally:
        worker.disable_monitor()
        monitor.close(linger=0)
        worker.close(linger=0)
        learner.close()


def test_the_inbox_stops_reading_at_its_byte_budget():
    learner = LearnerEndpoint(limits=ReceiveLimits(max_message_bytes=100, receive_hwm=2))  # 200 bytes queued at most
    worker = zmq.Context.instance().socket(zmq.DEALER)
    worker.setsockopt(zmq.LINGER, 0)
    worker.connect(learner.address)
    try:
        for version in range(50):
            worker.send_multipart(encode(Heartbeat(worker_id=0, version=version)))
        time.sleep(0.5)
        assert 0 < learner.inbox.queued_bytes <= 200 + 100  # one message may cross the budget
        assert len(learner.inbox.queued) < 50
        versions = []
        while (received := learner.receive(timeout_ms=200)) is not None:
            versions.append(received[1].version)
        assert versions == list(range(50))  # nothing lost: the rest waited in ZeroMQ
    finally:
        worker.close(linger=0)
        learner.close()
