"""Where a lane worker process's start-up time goes."""

from __future__ import annotations

import time

__all__ = ["StartupPhases"]


class StartupPhases:
    """Where a worker's start-up goes (seconds per phase, logged as ``worker_ready``): the
    fleet rule is that none of it grows with the history in ``lanes.jobs``."""

    def __init__(self) -> None:
        self.began = self.last = time.monotonic()
        self.seconds: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        now = time.monotonic()
        self.seconds[phase] = round(now - self.last, 2)
        self.last = now

    def total(self) -> float:
        return round(time.monotonic() - self.began, 2)
