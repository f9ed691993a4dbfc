"""GenerationClient: how the marketplace backend publishes generation requests.

    async with GenerationClient(ClientSettings()) as client:
        job_id = await client.submit(GenerationSpec(prompt='a poster "SUMMER SALE"'))

``submit`` returns once the broker has acknowledged the request (acks=all, idempotent
producer, key = job id).
"""

from __future__ import annotations

import hashlib
import uuid
from types import TracebackType

from aiokafka import AIOKafkaProducer

from producers.kafka import make_producer
from producers.settings import ClientSettings
from producers.tracing import trace_headers
from schemas.events import CancelRequested, GenerationRequested
from schemas.spec import GenerationSpec
from schemas.topics import Topics

__all__ = ["GenerationClient", "fingerprint", "job_id_for"]


# Fields added after requests were fingerprinted: left out while unset, so a body accepted
# before they existed keeps its fingerprint (an Idempotency-Key replay still matches).
_LATER_FIELDS = ("partial_images", "edit")


def fingerprint(spec: GenerationSpec) -> str:
    unset = {f for f in _LATER_FIELDS if getattr(spec, f) in (None, 0)}
    return hashlib.sha256(spec.model_dump_json(exclude=unset).encode()).hexdigest()


def job_id_for(idempotency_key: str | None, tenant: str | None = None) -> str:
    """A new job id, or the same one for the same (tenant, idempotency key)."""
    if idempotency_key is None:
        return f"job_{uuid.uuid4().hex}"
    digest = hashlib.sha256(f"{tenant or ''}\x00{idempotency_key}".encode()).hexdigest()
    return f"job_{digest[:32]}"


class GenerationClient:
    def __init__(
        self,
        settings: ClientSettings,
        producer: AIOKafkaProducer | None = None,
        *,
        producer_name: str = "lanes-sdk",
    ) -> None:
        self.topics = Topics(settings.topic_prefix)
        self._own = producer is None
        self.producer = producer or make_producer(
            settings, client_id=producer_name, topics=[self.topics.requests]
        )
        self.producer_name = producer_name

    async def start(self) -> None:
        if self._own:
            await self.producer.start()

    async def stop(self) -> None:
        if self._own:
            await self.producer.stop()

    async def __aenter__(self) -> GenerationClient:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def submit(
        self, spec: GenerationSpec, *, idempotency_key: str | None = None, job_id: str | None = None
    ) -> str:
        job_id = job_id or job_id_for(idempotency_key, spec.tenant)
        event = GenerationRequested(
            job_id=job_id, producer=self.producer_name, spec=spec, fingerprint=fingerprint(spec)
        )
        # The caller's trace (the gateway's request span) goes on with the job; from the SDK
        # with no tracer the router starts the job's trace.
        await self.producer.send_and_wait(
            self.topics.requests, event.to_bytes(), key=job_id.encode(), headers=_headers()
        )
        return job_id

    async def cancel(self, job_id: str, reason: str | None = None) -> None:
        """Ask for the job to be canceled (queued or deferred: at once; rendering: at the
        next step). The job ends ``canceled`` unless it finished first."""
        event = CancelRequested(job_id=job_id, producer=self.producer_name, reason=reason)
        await self.producer.send_and_wait(
            self.topics.requests, event.to_bytes(), key=job_id.encode(), headers=_headers()
        )


def _headers() -> list[tuple[str, bytes]] | None:
    return list(trace_headers()) or None
