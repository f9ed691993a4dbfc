"""Errors of the client helpers.

schemas.exceptions.LanesError
└── PoisonEvent
    └── ForgedCommand          ops command signature missing, wrong or stale
"""

from __future__ import annotations

from schemas.exceptions import PoisonEvent

__all__ = ["ForgedCommand"]


class ForgedCommand(PoisonEvent):
    """Signature missing or wrong, or timestamp outside the tolerance."""
