"""The one place aiokafka clients are built: producers (acks=all, idempotent), consumers and
admin clients, each with the connection settings (TLS, SASL) of ``ClientSettings``.

A test fails if any other module constructs an aiokafka client, so a connection setting
added here reaches every client: the SDK's, every component's, the CLI's and the tests'.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from producers.settings import ClientSettings, KafkaConnection

__all__ = ["make_producer", "make_raw_consumer", "make_admin", "connection_options"]


def _ssl_context(conn: KafkaConnection) -> ssl.SSLContext:
    """TLS 1.2+, the given CA (or the system's), hostname verification on; a client
    certificate for mutual TLS."""
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(conn.ca_file) if conn.ca_file else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if conn.cert_file is not None and conn.key_file is not None:
        context.load_cert_chain(str(conn.cert_file), str(conn.key_file))
    return context


def connection_options(settings: ClientSettings) -> dict[str, Any]:
    """The keyword arguments every aiokafka client gets for the cluster's address and
    security."""
    conn = settings.kafka_connection
    options: dict[str, Any] = {
        "bootstrap_servers": list(conn.bootstrap),
        "security_protocol": conn.security_protocol,
    }
    if conn.tls:
        options["ssl_context"] = _ssl_context(conn)
    if conn.sasl:
        assert conn.password is not None  # ClientSettings checks
        options.update(
            sasl_mechanism=conn.sasl_mechanism,
            sasl_plain_username=conn.username,
            sasl_plain_password=conn.password.get_secret_value(),
        )
    return options


def make_producer(
    settings: ClientSettings,
    client_id: str = "lanes",
    *,
    topics: Iterable[str] = (),
    **overrides: Any,
) -> AIOKafkaProducer:
    """``topics``: what it is known to write. Its metadata requests name them (and each topic
    it sends to after); a producer that has sent nothing and names none asks the cluster
    for every topic's metadata at each refresh (aiokafka#440): on a shared cluster that is
    a response as large as the cluster, every 30 s, and ACL denials logged for the topics
    it may not describe."""
    options: dict[str, Any] = dict(
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
    options.update(overrides)
    producer = AIOKafkaProducer(**connection_options(settings), **options)
    if topics:  # (aiokafka's documented remedy; sends still add their topics)
        producer.client.set_topics(list(topics))
    return producer


def make_raw_consumer(settings: ClientSettings, *topics: str, **options: Any) -> AIOKafkaConsumer:
    """A consumer with exactly ``options`` besides the connection (services' ``make_consumer``
    adds the components' defaults on top of this)."""
    return AIOKafkaConsumer(*topics, **connection_options(settings), **options)


def make_admin(settings: ClientSettings, **options: Any) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**connection_options(settings), **options)
