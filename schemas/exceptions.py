"""The root of every error Lanes raises on purpose, and how the consume loop treats them.

    LanesError                  root; ``retriable`` is what retry logic reads
    ├── PoisonEvent             this event can never be processed: it goes to lanes.dlq
    │   └── (services) ArtifactMissing, (producers) ForgedCommand ...
    ├── TransientError          retriable: retried in place with backoff, then lanes.dlq
    │   └── (services) ArtifactUnavailable ...
    └── (each package's own)    services.exceptions, producers.exceptions

Each package keeps its errors in its own ``exceptions.py``, all under this root, so one
``except LanesError`` catches what Lanes raised and lets a programming error through.
"""

from __future__ import annotations

__all__ = ["LanesError", "PoisonEvent", "TransientError"]


class LanesError(Exception):
    retriable: bool = False


class PoisonEvent(LanesError):
    """The event (or the request it carries) can never be processed."""

    retriable = False


class TransientError(LanesError):
    """A dependency failed for now (a broker, an object store): trying again may work."""

    retriable = True
