"""``lanes.control`` as every follower reads it: only records the control plane signed.

A record whose signature is missing or wrong (anyone who can write the topic could try) is
logged, counted in ``lanes_control_records_rejected_total`` and ignored: the lane keeps its
last valid desired state. Tombstones are ignored too (the control plane never writes one).
"""

from __future__ import annotations

import structlog
from prometheus_client import CollectorRegistry, Counter

from schemas.control import LaneDesired
from schemas.topics import Topics
from services.config.settings import Settings
from services.kafka.compacted_view import CompactedView
from services.signing.control import ForgedRecord

__all__ = ["ControlView", "rejected_counter"]

log = structlog.get_logger("lanes.control")
REJECTED = "lanes_control_records_rejected_total"


def rejected_counter(registry: CollectorRegistry) -> Counter:
    """The registry's counter of refused control records (one per registry)."""
    existing = registry._names_to_collectors.get(REJECTED)  # noqa: SLF001
    if isinstance(existing, Counter):
        return existing
    return Counter(
        REJECTED.removesuffix("_total"),
        "lanes.control records ignored: unsigned, unknown key, wrong signature, tombstone",
        ["reason"],
        registry=registry,
    )


class ControlView(CompactedView[LaneDesired]):
    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        verifier = settings.control_verifier()
        super().__init__(settings, Topics(settings.topic_prefix).control, verifier.parse)
        self.rejected = rejected_counter(registry) if registry is not None else None

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        if value is None:
            self._refuse(key, "tombstone")
            return
        try:
            self.items[key.decode()] = self.parse(value)
        except ForgedRecord as exc:
            self._refuse(key, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bad record must not stop the view
            self._refuse(key, f"invalid: {str(exc)[:200]}")

    def _refuse(self, key: bytes, reason: str) -> None:
        log.warning("control_record_refused", lane=key.decode(errors="replace"), reason=reason)
        if self.rejected is not None:
            self.rejected.labels(reason.split(":")[0]).inc()
