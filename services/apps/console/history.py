"""Each lane's recent revisions (who changed what, and why), from ``lanes.control``.

The topic is compacted: the latest revision per lane is always there, and the older ones
until the broker compacts them, so the page shows what is still on the topic (at most
``keep`` per lane), newest first.
"""

from __future__ import annotations

from collections import defaultdict, deque

from schemas.control import LaneDesired
from services.config.settings import Settings
from services.kafka.control_view import ControlView

__all__ = ["RevisionHistory"]


class RevisionHistory(ControlView):
    def __init__(self, settings: Settings, keep: int = 20) -> None:
        super().__init__(settings)
        self.revisions: dict[str, deque[LaneDesired]] = defaultdict(lambda: deque(maxlen=keep))

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        super()._apply(key, value)
        if key is None or value is None:
            return
        desired = self.items.get(key.decode())
        seen = self.revisions[key.decode()]
        if desired is not None and (not seen or seen[0].revision < desired.revision):
            seen.appendleft(desired)

    def of(self, lane: str) -> list[LaneDesired]:
        return list(self.revisions.get(lane, ()))
