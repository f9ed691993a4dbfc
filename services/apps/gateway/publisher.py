"""What the gateway publishes: generation requests (idempotency, webhook target and the
tenant's quota checked first) and cancels, each bounded by ``publish_timeout_s``.

``Publisher`` owns the Kafka client and the fleet heartbeat (start/stop); the routers reach
it through ``deps.get_publisher``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from fastapi import HTTPException
from prometheus_client import CollectorRegistry, Counter, Histogram

from producers.client import GenerationClient, fingerprint, job_id_for
from schemas.records import JobState
from schemas.spec import GenerationSpec
from schemas.topics import Topics
from services.apps.gateway.views import Accepted, Followers
from services.config.settings import Settings
from services.domain.admission import TokenBuckets
from services.domain.fleet_share import GatewayFleet
from services.kafka.cluster_probe import ClusterProbe
from services.webhooks.delivery import RefusedTarget, Unresolvable, resolve_target

__all__ = ["Publisher"]

log = structlog.get_logger("lanes.gateway")


class Publisher:
    def __init__(
        self,
        settings: Settings,
        accepted: Accepted,
        find: Callable[[str], JobState | None],
        registry: CollectorRegistry,
    ) -> None:
        self.settings = settings
        self.accepted = accepted
        self.find = find  # a job's folded record, if the view has it
        self.client: GenerationClient | None = None  # made in start(): needs a running loop
        self.fleet: GatewayFleet | None = None
        self.quotas = TokenBuckets(
            settings.admission.tenant_quotas,
            settings.admission.default_quota,
            share=lambda: self.fleet.share() if self.fleet is not None else 1.0,
        )
        self.followers = Followers()
        self.requests = Counter(
            "lanes_gateway_requests_total", "Generation requests", ["outcome"], registry=registry
        )
        # The broker as the gateway sees it (the alerts LanesKafkaUnreachable and
        # LanesKafkaBelowMinISR): the topic it writes, lanes.requests.
        self.probe = ClusterProbe(settings, Topics(settings.topic_prefix).requests, registry)
        self.publish_seconds = Histogram(
            "lanes_gateway_publish_seconds",
            "Time until the broker acknowledged a request",
            registry=registry,
        )

    async def start(self) -> None:
        self.client = GenerationClient(self.settings, producer_name="lanes-gateway")
        await self.client.start()
        self.fleet = GatewayFleet(self.settings, self.client.producer)
        self.followers.start(gateway_fleet=self.fleet.run, kafka_probe=self.probe.run)

    async def stop(self) -> None:
        await self.followers.stop()
        if self.client is not None:
            await self.client.stop()

    def ready(self) -> bool:
        return self.client is not None and not self.followers.dead()

    def known_fingerprint(self, job_id: str) -> str | None:
        job = self.find(job_id)
        if job is not None and job.fingerprint:
            return job.fingerprint
        accepted = self.accepted.get(job_id)
        return accepted[0] if accepted else None

    async def accept(self, spec: GenerationSpec, idempotency_key: str | None) -> tuple[str, bool]:
        """Publish a request whose tenant is already the caller's: its job id, and whether
        it replays an earlier one. HTTPException with the reason if not."""
        fp = fingerprint(spec)
        job_id = job_id_for(idempotency_key, spec.tenant)
        if idempotency_key is not None:
            previous = self.known_fingerprint(job_id)
            if previous is not None:
                if previous != fp:
                    self.requests.labels("idempotency_conflict").inc()
                    raise HTTPException(
                        422, "Idempotency-Key was already used with a different request body"
                    )
                self.requests.labels("replayed").inc()
                return job_id, True
        if spec.webhook_url is not None:  # refuse a private target now, not at delivery
            try:
                await resolve_target(str(spec.webhook_url), self.settings.webhooks.allowed_hosts)
            except Unresolvable:
                pass  # DNS may recover before the job ends; delivery checks again
            except RefusedTarget as exc:
                self.requests.labels("invalid").inc()
                raise HTTPException(422, f"webhook_url refused: {exc}") from exc
        wait_s = self.quotas.take(spec.tenant or "")
        if wait_s is not None:
            self.requests.labels("over_quota").inc()
            raise HTTPException(
                429,
                f"tenant {spec.tenant or '(none)'} is over its request quota",
                headers={"Retry-After": TokenBuckets.retry_after_header(wait_s)},
            )
        with self.publish_seconds.time():
            try:
                assert self.client is not None
                # Bounded: with the cluster below min.insync.replicas the broker never
                # acknowledges, and the client gets a 503 to retry, not a hang.
                await asyncio.wait_for(
                    self.client.submit(spec, job_id=job_id), self.settings.gateway.publish_timeout_s
                )
            except Exception as exc:
                self.requests.labels("publish_failed").inc()
                log.error("publish_failed", job_id=job_id, error=str(exc) or type(exc).__name__)
                raise HTTPException(
                    503,
                    "the broker did not acknowledge the request; retry later with the same "
                    "Idempotency-Key (it may have been enqueued)",
                    headers={"Retry-After": "5"},
                ) from exc
        self.accepted.add(job_id, fp, spec.tenant)
        self.requests.labels("accepted").inc()
        log.info("generation_accepted", job_id=job_id, intent=spec.intent, tenant=spec.tenant)
        return job_id, False

    async def cancel(self, job_id: str) -> None:
        """Publish a cancel for a job the caller may see (checked by the router)."""
        try:
            assert self.client is not None
            await asyncio.wait_for(
                self.client.cancel(job_id), self.settings.gateway.publish_timeout_s
            )
        except Exception as exc:
            log.error("publish_failed", job_id=job_id, error=str(exc) or type(exc).__name__)
            raise HTTPException(
                503, "could not publish the cancel; retry", headers={"Retry-After": "5"}
            ) from exc
