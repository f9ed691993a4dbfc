"""Errors a handler raises to steer the consume loop.

    LanesError                 root; retriable = False
    ├── PoisonEvent            the event cannot be processed, ever: to lanes.dlq
    └── TransientError         retriable = True: retried in place with backoff, then DLQ
"""

from __future__ import annotations

__all__ = ["LanesError", "PoisonEvent", "TransientError"]


class LanesError(Exception):
    retriable: bool = False


class PoisonEvent(LanesError):
    retriable = False


class TransientError(LanesError):
    retriable = True
