"""Producer, consumer and admin factories: the delivery rules live here, once.

Producers: acks=all, idempotence on. Consumers: auto-commit off (the consume loop commits
after the output is acknowledged), bounded fetches so a burst waits in Kafka.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    NodeNotReadyError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
)

from producers.kafka import connection_options, make_admin, make_producer, make_raw_consumer
from schemas.topics import TopicSpec
from services.config.settings import Settings
from services.exceptions import KafkaAccessRefused

__all__ = [
    "make_producer",
    "make_consumer",
    "make_follower",
    "assign_held",
    "ensure_topics",
    "TopicChange",
    "resize_topics",
    "wait_for_kafka",
    "partition_ids",
    "refusal",
    "check_access",
    "denied",
]

log = structlog.get_logger("lanes.kafka")


def _transient(exc: BaseException) -> bool:
    """An error another try (a new connection, another node) may not meet."""
    if isinstance(exc, NodeNotReadyError | KafkaConnectionError | OSError | TimeoutError):
        return True
    return bool(getattr(exc, "retriable", False))


def make_consumer(
    settings: Settings,
    *topics: str,
    group: str | None,
    client_id: str = "lanes",
    **overrides: Any,
) -> AIOKafkaConsumer:
    options: dict[str, Any] = dict(
        client_id=client_id,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=1 << 20,
        fetch_max_bytes=4 << 20,
        session_timeout_ms=settings.cluster.session_timeout_ms,
        heartbeat_interval_ms=max(500, settings.cluster.session_timeout_ms // 10),
        max_poll_interval_ms=300000,
        metadata_max_age_ms=5000,
    )
    if group is not None and settings.cluster.instance_id:
        # Static membership: a member restarted under the same instance id (a crashed
        # container in its pod) takes its partitions back at once, without a rebalance.
        options["group_instance_id"] = f"{settings.cluster.instance_id}-{client_id}"
    options.update(overrides)
    return make_raw_consumer(settings, *topics, **options)


# How long a follower's fetch waits for new records. A view's follower (assigned partitions,
# no group, never paused by its loop) gets a record as soon as it is written whatever this
# is: the broker answers a waiting fetch when one arrives. The wait only bounds how often
# an idle follower asks again (at the 500 ms default, the dozen views of an idle stack sent
# ~60 empty fetches a second, a third of all its requests).
FOLLOWER_FETCH_WAIT_MS = 5000
# Over TLS a consumer's stop waits for the broker's close_notify on each connection, and the
# broker reads the close only once it has answered the fetch in flight: a follower's stop,
# and so every view read and every process exit over SASL_SSL, took the whole wait (5 s). A
# follower over TLS asks at most every second; a one-shot read (a view's load, to the end
# offsets and then stopped) waits only briefly on a fetch.
TLS_FOLLOWER_FETCH_WAIT_MS = 1000
ONE_SHOT_FETCH_WAIT_MS = 100


def make_follower(
    settings: Settings, client_id: str, *, one_shot: bool = False, **overrides: Any
) -> AIOKafkaConsumer:
    """A consumer for a view: no group, from the earliest offset, long fetch waits (short
    ones for a ``one_shot`` read, stopped once at the end offsets). Assign its partitions
    with ``assign_held``."""
    if one_shot:
        wait = ONE_SHOT_FETCH_WAIT_MS
    elif settings.kafka_connection.tls:
        wait = TLS_FOLLOWER_FETCH_WAIT_MS
    else:
        wait = FOLLOWER_FETCH_WAIT_MS
    return make_consumer(
        settings,
        group=None,
        client_id=client_id,
        fetch_max_wait_ms=wait,
        # Its partitions are assigned, not subscribed: new ones are not looked for, and a
        # moved leader is found on the error, so metadata need not be asked every 5 s.
        metadata_max_age_ms=30000,
        **overrides,
    )


def assign_held(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
    """Assign ``tps`` paused, so that no fetch leaves before the caller has sought where it
    reads from (one sent at the reset position would hold the first read for its whole
    wait); the caller resumes them once positioned."""
    consumer.assign(tps)
    consumer.pause(*tps)


async def refusal(settings: Settings) -> str | None:
    """Why the cluster refuses this process, in one line without the secret (None: it
    does not refuse; it may be down). One direct connection to the first bootstrap address
    tells authentication and TLS failures apart from a broker that is not there."""
    from aiokafka.conn import create_conn
    from aiokafka.errors import SaslAuthenticationFailed, UnsupportedSaslMechanismError

    conn = settings.kafka_connection
    host, _, port = conn.bootstrap[0].rpartition(":")
    options = connection_options(settings)
    where = f"Kafka at {conn.bootstrap[0]} ({conn.security_protocol})"
    try:
        probe = await asyncio.wait_for(
            create_conn(
                host,
                int(port),
                request_timeout_ms=5000,
                ssl_context=options.get("ssl_context"),
                security_protocol=conn.security_protocol,
                sasl_mechanism=options.get("sasl_mechanism"),
                sasl_plain_username=options.get("sasl_plain_username"),
                sasl_plain_password=options.get("sasl_plain_password"),
            ),
            10,
        )
    except SaslAuthenticationFailed:
        return f"{where}: authentication failed for user {conn.username!r} (wrong user or password)"
    except UnsupportedSaslMechanismError as exc:
        return f"{where}: SASL mechanism {conn.sasl_mechanism} refused: {exc}"
    except ssl.SSLCertVerificationError as exc:
        return f"{where}: TLS verify failed: {exc.verify_message} (LANES_KAFKA_CA_FILE?)"
    except ssl.SSLError as exc:
        return f"{where}: TLS handshake failed: {exc.reason} (is the port TLS?)"
    except KafkaConnectionError as exc:
        if "closed" in str(exc) and not conn.tls:
            return f"{where}: the broker closed the connection: is this a TLS or SASL port?"
        return None
    except (OSError, TimeoutError):
        return None
    probe.close()
    return None


def denied(exc: BaseException, settings: Settings, operation: str) -> KafkaAccessRefused | None:
    """A broker's authorization error as one line naming the principal, the operation and
    the resource (None if ``exc`` is not one); the component stops with it, not a hang."""
    user = settings.kafka_connection.username or "ANONYMOUS"
    names = ", ".join(str(a) for a in exc.args) or "?"
    if isinstance(exc, TopicAuthorizationFailedError):
        what = f"{operation} topic {names}"
    elif isinstance(exc, GroupAuthorizationFailedError):
        what = f"Read group {names}"
    elif isinstance(exc, ClusterAuthorizationFailedError):
        what = "IdempotentWrite on the cluster" if operation == "Write" else "the cluster"
    else:
        return None
    reason = f"Kafka principal {user!r} may not {what} (see `lanes kafka acls`)"
    log.error("kafka_access_refused", reason=reason)
    return KafkaAccessRefused(reason)


async def check_access(settings: Settings) -> None:
    """Raise KafkaAccessRefused (logged, one line) when the cluster refuses this process."""
    await _raise_if_refused(settings)


async def _raise_if_refused(settings: Settings) -> None:
    reason = await refusal(settings)
    if reason is not None:
        log.error("kafka_access_refused", reason=reason)
        raise KafkaAccessRefused(reason)


async def wait_for_kafka(settings: Settings, timeout_s: float = 60.0) -> None:
    """Return once the cluster answers a metadata request; raise TimeoutError otherwise."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    last: Exception | None = None
    while asyncio.get_running_loop().time() < deadline:
        admin = make_admin(settings, request_timeout_ms=5000)
        try:
            await admin.start()
            await admin.list_topics()
            return
        except (KafkaError, OSError) as exc:
            if not _transient(exc):
                raise
            await _raise_if_refused(settings)
            last = exc
            await asyncio.sleep(0.5)
        finally:
            await admin.close()
    raise TimeoutError(
        f"Kafka at {settings.kafka_bootstrap} did not answer in {timeout_s}s: {last}"
    )


async def ensure_topics(settings: Settings, specs: Iterable[TopicSpec]) -> list[str]:
    """Create missing topics (idempotent). Returns the names it created."""
    admin = make_admin(settings, request_timeout_ms=30000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [s for s in specs if s.name not in existing]
        created: list[str] = []
        for spec in wanted:
            try:
                config = {
                    **spec.config(),
                    "min.insync.replicas": str(settings.cluster.min_insync_replicas),
                }
                await admin.create_topics(
                    [
                        NewTopic(
                            spec.name,
                            spec.partitions,
                            settings.cluster.replication_factor,
                            topic_configs=config,
                        )
                    ]
                )
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass
        if created:
            await _wait_for_leaders(admin, created)
        return created
    finally:
        await admin.close()


@dataclass(frozen=True)
class TopicChange:
    """What `lanes kafka topics` did to one topic: ``created``, ``added`` (partitions),
    ``unchanged``, ``kept`` (has more than asked: Kafka cannot remove partitions) or
    ``refused`` (a keyed, compacted topic: see docs/kafka.md, "Raising partitions")."""

    topic: str
    had: int
    wanted: int
    action: str


async def resize_topics(settings: Settings, specs: Iterable[TopicSpec]) -> list[TopicChange]:
    """Create the missing topics and raise the partition counts of the others to their
    specs, except on compacted topics, whose keys (job ids) would move to other partitions
    and split each job's history in two; those are refused, never remapped."""
    specs = list(specs)
    created = set(await ensure_topics(settings, specs))
    admin = make_admin(settings, request_timeout_ms=30000)
    await admin.start()
    try:
        described = {
            t["topic"]: len(t.get("partitions") or [])
            for t in await admin.describe_topics([s.name for s in specs])
        }
        changes: list[TopicChange] = []
        for spec in specs:
            had = described.get(spec.name, 0)
            if spec.name in created:
                action = "created"
            elif had == spec.partitions:
                action = "unchanged"
            elif had > spec.partitions:
                action = "kept"
            elif spec.compacted:
                action = "refused"
            else:
                await admin.create_partitions({spec.name: NewPartitions(spec.partitions)})
                action = "added"
            changes.append(TopicChange(spec.name, had, spec.partitions, action))
        return changes
    finally:
        await admin.close()


async def _wait_for_leaders(
    admin: AIOKafkaAdminClient, names: list[str], timeout_s: float = 30
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        described = await admin.describe_topics(names)
        ready = all(
            t.get("error_code", 0) == 0
            and t.get("partitions")
            and all(p.get("leader", -1) >= 0 for p in t["partitions"])
            for t in described
        )
        if ready:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"topics {names} got no leaders in {timeout_s}s")


async def partition_ids(settings: Settings, topic: str, timeout_s: float = 60.0) -> list[int]:
    """The topic's partition numbers; raises LookupError if the topic does not exist.

    A broker that is down (its node still in the cached metadata) or an election under way
    is retried on a new connection until ``timeout_s``: a process starting while the cluster
    has lost a broker waits for the others instead of crashing."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        admin = make_admin(settings, request_timeout_ms=10000)
        try:
            await admin.start()
            (described,) = await admin.describe_topics([topic])
            break
        except (KafkaError, OSError) as exc:
            if not _transient(exc) or loop.time() > deadline:
                raise
            await _raise_if_refused(settings)
            log.warning("kafka_metadata_retry", topic=topic, error=repr(exc)[:200])
            await asyncio.sleep(0.5)
        finally:
            await admin.close()
    if described.get("error_code", 0) != 0 or not described.get("partitions"):
        raise LookupError(f"topic {topic!r} does not exist")
    return sorted(p["partition"] for p in described["partitions"])
