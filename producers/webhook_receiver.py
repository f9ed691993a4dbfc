"""For the marketplace backend: verify a Lanes webhook delivery before trusting it.

    from producers.webhook_receiver import verify_delivery
    event = verify_delivery(raw_body, request.headers, ["whsec_current", "whsec_previous"])

Uses the Standard Webhooks reference library: any of your secrets may match any of the
delivery's signatures (Lanes sends one per secret while keys rotate), and a timestamp more
than five minutes away from now is refused (replay protection). Deduplicate on the
``webhook-id`` header: a retry or replay of the same event carries the same id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

__all__ = ["verify_delivery", "WebhookVerificationError"]


def verify_delivery(
    body: bytes | str, headers: Mapping[str, str], secrets: str | Sequence[str]
) -> Any:
    """The parsed event if some secret verifies it; raises WebhookVerificationError."""
    candidates = [secrets] if isinstance(secrets, str) else list(secrets)
    if not candidates:
        raise ValueError("name at least one whsec_ secret")
    error: WebhookVerificationError | None = None
    for secret in candidates:
        try:
            return Webhook(secret).verify(body, dict(headers))
        except WebhookVerificationError as exc:
            error = exc
    assert error is not None
    raise error
