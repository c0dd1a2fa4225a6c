"""A stand-in rollout worker that lies: the real worker (real vLLM generation and scoring), whose train replies are
tampered with before they are sent, one kind per reply (tests/tampering.py).

    python -m tests.tampering_worker --connect tcp://HOST:PORT --kinds group_of_one,too_long --record FILE

The learner must refuse each tampered reply and drop the worker. When dropped, this worker joins again under a new
identity and worker id, keeping its engine, and tampers its next reply with the next kind; after the last kind it
leaves (exit 0). FILE gets one JSON line per tampered reply: kind, worker id, request id, sample and task ids.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
from pathlib import Path

from rl.process_env import DISTRIBUTED_ENV
from rl.wire import Tasks, WeightsLoaded
from rollout.worker import RolloutWorker
from tests.tampering import tamper

log = logging.getLogger("rollout")


class TamperingWorker(RolloutWorker):
    def __init__(self, address: str, kinds: list[str], record: Path):
        self.address, self.kinds, self.record, self.joins = address, list(kinds), record, 0
        self.tampered = False  # since it last joined
        super().__init__(address, name="tampering")

    def generate(self, request: Tasks):
        if self.tampered:
            return None  # dropped already (its Shutdown is on the way): one bad reply per kind
        answer = super().generate(request)
        if answer is None or request.purpose != "train" or not self.kinds:
            return answer
        kind, self.tampered = self.kinds[0], True
        header, frames = tamper(kind, *answer, request)
        with self.record.open("a") as out:
            out.write(json.dumps({"kind": kind, "worker_id": self.worker_id, "request_id": request.request_id,
                                  "sample_ids": [s.sample_id for s in header.samples],
                                  "task_ids": [s.task_id for s in header.samples]}) + "\n")
        log.info("worker %d: sent a reply tampered with %s", self.worker_id, kind)
        return header, frames

    def serve(self):
        while True:
            shutdown = super().serve()
            if not shutdown.reason.startswith("dropped by the learner"):
                return shutdown  # the run is over
            self.kinds.pop(0)
            if not self.kinds:
                return shutdown  # every kind was refused: leave
            self.rejoin()

    def rejoin(self) -> None:
        """Join again as a new worker with the engine it has (the learner sends it the current weights)."""
        self.heartbeat.stop()
        self.endpoint.close()
        self.joins += 1
        self.version, self.pending_buckets, self.tampered = 0, [], False
        self.connect(self.address, 120.0, None, identity=f"tampering-{os.getpid()}-{self.joins}".encode())
        self.endpoint.send(WeightsLoaded(worker_id=self.worker_id, version=0, load_seconds=0.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connect", required=True)
    parser.add_argument("--kinds", required=True, help="comma-separated names from tests.tampering.TAMPERINGS")
    parser.add_argument("--record", required=True, type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    for key in DISTRIBUTED_ENV:
        os.environ.pop(key, None)
    TamperingWorker(args.connect, args.kinds.split(","), args.record).run()


if __name__ == "__main__":
    main()
