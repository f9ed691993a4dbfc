"""`lanes kafka acls`: each component's Kafka rights, derived from the component registry
(what it reads and writes) and the topics module (the names, under LANES_TOPIC_PREFIX and
LANES_GROUP_PREFIX), printed as a table and applied to a cluster.

Read on what a component consumes (and Read on its group), Write on what it produces (and
IdempotentWrite on the cluster: every producer is idempotent), Describe on the lanes' topics
and groups for the components that measure lag. Nothing else: `allow.everyone.if.no.acl.found`
is false on a secured cluster, so a right missing here is refused there.

Applied with kafka-python's admin client: aiokafka has no CreateAcls (aiokafka issue 955),
and Kafka's own kafka-acls tool starts a JVM per rule (about a second each).
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.topics import Groups, Topics
from services.apps.registry import CLIENTS, CONSUMERS, GATEWAY, Component, workers
from services.config.routes import Routes
from services.config.settings import Settings

__all__ = ["Rule", "acl_rules", "render_table", "apply_rules", "principals"]

LANES = "lanes"  # every lane topic and spill queue: a prefixed pattern


@dataclass(frozen=True, order=True)
class Rule:
    principal: str  # the Kafka user, without "User:"
    resource: str  # topic, group or cluster
    name: str
    pattern: str  # literal or prefixed
    operation: str  # Read, Write, Describe, IdempotentWrite


def principals(routes: Routes) -> list[Component]:
    """Every component with a principal of its own: the stack's processes, a worker per
    lane, the SDK publisher, the ops tools and KEDA's lag reader."""
    keda = Component("keda", None, None, 0, lag=True)
    return [GATEWAY, *CONSUMERS, *workers(routes), *CLIENTS, keda]


def _topic(topics: Topics, name: str) -> tuple[str, str]:
    if name == LANES:
        return topics.lane(""), "prefixed"  # lanes.lane.<lane>[.spill]
    return getattr(topics, name), "literal"


def acl_rules(settings: Settings, routes: Routes) -> list[Rule]:
    topics, groups = Topics(settings.topic_prefix), Groups(settings.cluster.group_prefix)
    rules: set[Rule] = set()
    for comp in principals(routes):
        who = comp.principal
        for name in comp.reads:
            rules.add(Rule(who, "topic", *_topic(topics, name), "Read"))
        for name in comp.writes:
            rules.add(Rule(who, "topic", *_topic(topics, name), "Write"))
        if comp.writes:
            rules.add(Rule(who, "cluster", "kafka-cluster", "literal", "IdempotentWrite"))
        if comp.lane is not None:  # its lane's group, and the spill groups it assists
            rules.add(Rule(who, "group", groups.lane(""), "prefixed", "Read"))
        elif comp.group is not None:
            rules.add(Rule(who, "group", comp.group(groups), "literal", "Read"))
        if comp.lag:
            rules.add(Rule(who, "topic", topics.lane(""), "prefixed", "Describe"))
            rules.add(Rule(who, "group", groups.lane(""), "prefixed", "Describe"))
    return sorted(rules)


def render_table(rules: list[Rule]) -> str:
    """Markdown: one row per principal and resource, its operations together."""
    rows: dict[tuple[str, str, str, str], list[str]] = {}
    for r in rules:
        rows.setdefault((r.principal, r.resource, r.name, r.pattern), []).append(r.operation)
    lines = [
        "| principal | resource | name | pattern | operations |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {p} | {res} | `{n}` | {pat} | {', '.join(ops)} |"
        for (p, res, n, pat), ops in rows.items()
    ]
    return "\n".join(lines)


def apply_rules(settings: Settings, rules: list[Rule]) -> int:
    """Create the rules on the cluster as ``settings``' principal (an admin); returns how
    many. Idempotent: an existing rule is left as it is."""
    from kafka.admin import (
        ACL,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        KafkaAdminClient,
        ResourcePattern,
        ResourceType,
    )

    conn = settings.kafka_connection
    options: dict[str, object] = {
        "bootstrap_servers": list(conn.bootstrap),
        "security_protocol": conn.security_protocol,
    }
    if conn.tls:
        options["ssl_cafile"] = str(conn.ca_file) if conn.ca_file else None
        options["ssl_check_hostname"] = True
        if conn.cert_file is not None:
            options.update(ssl_certfile=str(conn.cert_file), ssl_keyfile=str(conn.key_file))
    if conn.sasl:
        assert conn.password is not None
        options.update(
            sasl_mechanism=conn.sasl_mechanism,
            sasl_plain_username=conn.username,
            sasl_plain_password=conn.password.get_secret_value(),
        )
    operations = {
        "Read": ACLOperation.READ,
        "Write": ACLOperation.WRITE,
        "Describe": ACLOperation.DESCRIBE,
        "IdempotentWrite": ACLOperation.IDEMPOTENT_WRITE,
    }
    kinds = {
        "topic": ResourceType.TOPIC,
        "group": ResourceType.GROUP,
        "cluster": ResourceType.CLUSTER,
    }
    patterns = {
        "literal": ACLResourcePatternType.LITERAL,
        "prefixed": ACLResourcePatternType.PREFIXED,
    }
    acls = [
        ACL(
            f"User:{r.principal}",
            "*",
            operations[r.operation],
            ACLPermissionType.ALLOW,
            ResourcePattern(kinds[r.resource], r.name, patterns[r.pattern]),
        )
        for r in rules
    ]
    admin = KafkaAdminClient(client_id="lanes-acls", **options)
    try:
        result = admin.create_acls(acls)
    finally:
        admin.close()
    if result["failed"]:
        raise RuntimeError(f"{len(result['failed'])} ACLs refused: {result['failed'][:3]}")
    return len(result["succeeded"])
