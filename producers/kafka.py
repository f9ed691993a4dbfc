"""The one producer configuration every Lanes process and client uses (acks=all, idempotent)."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from producers.settings import ClientSettings

__all__ = ["make_producer"]


def make_producer(settings: ClientSettings, client_id: str = "lanes") -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=0,  # latency first; batches still form while a request is in flight
        # Leader elections: a send to a dead leader fails over within one metadata refresh
        # (forced on NotLeaderForPartition), retried with this backoff; idempotence keeps
        # the retries from duplicating. A batch not acknowledged in request_timeout_ms
        # fails (the gateway answers 503 sooner: LANES_PUBLISH_TIMEOUT_S).
        request_timeout_ms=30000,
        retry_backoff_ms=200,
        metadata_max_age_ms=30000,
    )
