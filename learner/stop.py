"""Ctrl-C and SIGTERM on a learner rank: stop at the next safe point, after a checkpoint."""

from __future__ import annotations

import signal


class StopRequested(Exception):
    """Ctrl-C or SIGTERM: checkpoint and stop at the next safe point."""


class StopSignals:
    """SIGINT/SIGTERM set a flag; outside a critical section they also interrupt at once.

    The optimizer step and the weight publication are one critical section: a checkpoint taken
    halfway through an optimizer step could not be resumed exactly, so a signal that arrives
    there takes effect right after it.
    """

    def __init__(self, interrupt: bool = True):
        self.requested = False
        self.critical = not interrupt  # a rank that must never be interrupted only records the request
        signal.signal(signal.SIGINT, self.handle)
        signal.signal(signal.SIGTERM, self.handle)

    def handle(self, signum, frame) -> None:
        self.requested = True
        if not self.critical:
            raise StopRequested

    def __enter__(self):
        self.critical = True

    def __exit__(self, *exc) -> None:
        self.critical = False
        if self.requested and exc[0] is None:
            raise StopRequested
