"""Authentication at the gateway: the key ring followed from ``lanes.keys``, the throttle on
failed attempts, and the URL signer. ``Authenticator`` owns the key ring's follower."""

from __future__ import annotations

import structlog
from fastapi import HTTPException
from prometheus_client import CollectorRegistry, Counter

from services.apps.gateway.views import Followers
from services.auth.api_keys import Identity, InvalidKey
from services.auth.key_ring import KeyRing
from services.auth.throttle import FailureThrottle
from services.auth.url_signing import url_signer
from services.config.settings import Settings
from services.domain.admission import TokenBuckets

__all__ = ["Authenticator", "CHALLENGE"]

log = structlog.get_logger("lanes.gateway")
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="lanes"'}


class Authenticator:
    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        self.keys = KeyRing(settings)
        self.throttle = FailureThrottle(
            settings.auth.failure_burst, settings.auth.failure_rate_per_s
        )
        self.signer = url_signer(settings)
        self.followers = Followers()
        self.failures = Counter(
            "lanes_gateway_auth_failures_total",
            "Requests refused before any work: no valid key (invalid) or too many of those "
            "from one address (throttled)",
            ["outcome"],
            registry=registry,
        )

    async def start(self) -> None:
        self.followers.start(keys_view=self.keys.follow)

    async def stop(self) -> None:
        await self.followers.stop()

    def ready(self) -> bool:
        """A replica that cannot read ``lanes.keys`` would refuse good keys and honour
        revoked ones: it is not ready until the view is caught up and alive."""
        return self.keys.caught_up.is_set() and not self.followers.dead()

    def check_throttle(self, client: str) -> None:
        wait_s = self.throttle.wait_s(client)
        if wait_s is not None:
            self.failures.labels("throttled").inc()
            raise HTTPException(
                429,
                "too many failed authentications from this address; retry later",
                headers={"Retry-After": TokenBuckets.retry_after_header(wait_s)},
            )

    def refuse(self, client: str) -> HTTPException:
        """Count a failure against ``client``: the 401 to raise."""
        self.throttle.failed(client)
        self.failures.labels("invalid").inc()
        log.info("auth_refused", client=client)
        return HTTPException(401, str(InvalidKey()), headers=CHALLENGE)

    async def identify(self, client: str, authorization: str | None) -> Identity:
        """The caller's identity, or 429 (throttled) / 401 (no valid key)."""
        self.check_throttle(client)
        try:
            return await self.keys.authenticate(authorization)
        except InvalidKey:
            raise self.refuse(client) from None
