"""Kafka as production clusters run it: SASL_SSL (SCRAM-SHA-512) with a CA, mTLS between
the controllers, the StandardAuthorizer with no rights by default, and each Lanes component
connecting as its own principal with only the ACLs `lanes kafka acls` derives.

A final job with a webhook goes end to end with every component as itself; an independent
client (kcat, librdkafka) shows SCRAM over TLS working, a wrong password refused, and
writes refused to principals without the right."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from services.apps.kafka_acls import acl_rules, apply_rules, principals
from services.config.routes import load_routes
from services.config.settings import Settings
from services.kafka.local_broker import KafkaProcess, free_port
from services.kafka.local_security import ADMIN, LocalSecurity
from tests.support import WebhookReceiver, running_stack

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

KCAT = shutil.which("kcat")


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[KafkaProcess, LocalSecurity]]:
    home = tmp_path_factory.mktemp("secured")
    security = LocalSecurity(home / "security")
    security.ensure(c.principal for c in principals(load_routes(None)))
    kafka = KafkaProcess(home / "kafka", port=free_port(), security=security)
    try:
        kafka.start()
    except Exception as exc:
        pytest.fail(f"the secured broker did not start: {exc}\n{kafka.tail(60)}")
    try:
        yield kafka, security
    finally:
        kafka.stop()


def as_admin(settings: Settings, kafka: KafkaProcess, security: LocalSecurity) -> Settings:
    return settings.model_copy(
        update={
            "kafka_bootstrap": kafka.bootstrap,
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_username": ADMIN,
            "kafka_password": SecretStr(security.passwords()[ADMIN]),
            "kafka_ca_file": security.ca_file,
        }
    )


def kcat(
    kafka: KafkaProcess,
    security: LocalSecurity,
    user: str,
    password: str,
    *args: str,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    assert KCAT is not None
    return subprocess.run(
        [
            KCAT,
            "-b",
            kafka.bootstrap,
            "-X",
            "security.protocol=SASL_SSL",
            "-X",
            "sasl.mechanisms=SCRAM-SHA-512",
            "-X",
            f"sasl.username={user}",
            "-X",
            f"sasl.password={password}",
            "-X",
            f"ssl.ca.location={security.ca_file}",
            "-m",
            "10",
            *args,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def run_router_refused(env: dict[str, str]) -> tuple[str, str]:
    """`lanes run router` that must stop: its kafka_access_refused line, and all it printed."""
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "services.apps.cli", "run", "router"],
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    output = done.stdout + done.stderr
    refused = [line for line in output.splitlines() if "kafka_access_refused" in line]
    assert done.returncode != 0 and refused, output[-3000:]
    return refused[0], output


async def test_a_job_end_to_end_with_every_component_as_its_own_principal(
    settings: Settings,
    secured: tuple[KafkaProcess, LocalSecurity],
    receiver: WebhookReceiver,
) -> None:
    kafka, security = secured
    admin = as_admin(settings, kafka, security)
    started = time.monotonic()
    # The stack creates the topics as admin and applies `lanes kafka acls` before it
    # starts the components, each as lanes-<name>.
    async with running_stack(admin, principals=security.passwords()) as stack:
        await stack.wait_workers_ready()
        job_id = await stack.submit(
            {"prompt": 'a poster "TLS"', "intent": "draft", "webhook_url": receiver.url}
        )
        job = await stack.wait_for_status(job_id, {"succeeded", "failed"}, timeout=180)
        assert job["status"] == "succeeded", job
        (delivery,) = await receiver.wait_for(1)
        assert json.loads(delivery.body)["data"]["job_id"] == job_id
        print(
            f"secured stack: job total {job['timings']['total_ms']} ms "
            f"(queue {job['timings'].get('queue_ms')} ms); "
            f"up and through in {time.monotonic() - started:.1f} s"
        )


@pytest.mark.skipif(KCAT is None, reason="no kcat (apt-get install kcat; make test does)")
def test_kcat_sees_scram_over_tls_and_the_acls_refuse_what_a_principal_may_not(
    settings: Settings, secured: tuple[KafkaProcess, LocalSecurity]
) -> None:
    kafka, security = secured
    admin = as_admin(settings, kafka, security)
    topics = __import__("schemas.topics", fromlist=["Topics"]).Topics(admin.topic_prefix)
    passwords = security.passwords()
    # The topics and rules of this test's prefix.
    import asyncio

    from services.kafka.clients import ensure_topics

    asyncio.run(ensure_topics(admin, topics.specs(load_routes(None).lanes)))
    apply_rules(admin, acl_rules(admin, load_routes(None)))

    listed = kcat(kafka, security, ADMIN, passwords[ADMIN], "-L")
    assert listed.returncode == 0 and topics.control in listed.stdout, listed.stderr
    wrong = kcat(kafka, security, ADMIN, "not-the-password", "-L")
    assert wrong.returncode != 0 and "Authentication failed" in wrong.stderr + wrong.stdout

    def produce(user: str, topic: str) -> subprocess.CompletedProcess[str]:
        # keyed (compacted topics refuse a record without a key)
        return kcat(
            kafka, security, user, passwords[user], "-P", "-K:", "-t", topic, stdin="draft:x\n"
        )

    assert produce("lanes-sdk", topics.requests).returncode == 0  # its one right
    for user, topic in [
        ("lanes-sdk", topics.control),
        ("lanes-sdk", topics.jobs),
        ("lanes-sdk", topics.lane("draft")),
        ("lanes-worker-draft", topics.control),
        ("lanes-gateway", topics.jobs),
    ]:
        refused = produce(user, topic)
        text = refused.stderr + refused.stdout
        assert refused.returncode != 0 and "authoriz" in text.lower(), (user, topic, text)
    assert produce("lanes-control", topics.control).returncode == 0


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"LANES_KAFKA_PASSWORD": "not-the-password"}, "authentication failed"),
        ({"LANES_KAFKA_USERNAME": "nobody"}, "authentication failed"),
        ({"LANES_KAFKA_CA_FILE": "OTHER_CA"}, "TLS verify failed"),
        ({"LANES_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}, "is this a TLS or SASL port"),
    ],
)
def test_a_component_refused_by_the_cluster_exits_with_the_reason(
    settings: Settings,
    secured: tuple[KafkaProcess, LocalSecurity],
    tmp_path: Path,
    change: dict[str, str],
    reason: str,
) -> None:
    """`lanes run router` as its own principal, with one thing wrong: it does not start,
    exits non-zero at once and logs one line naming the cause, never the password."""
    import os

    import trustme

    from services.apps.registry import child_env

    kafka, security = secured
    admin = as_admin(settings, kafka, security)
    password = security.passwords()["lanes-router"]
    env = child_env(
        admin,
        os.environ,
        LANES_KAFKA_USERNAME="lanes-router",
        LANES_KAFKA_PASSWORD=password,
        LANES_LOG_LEVEL="INFO",
    )
    if change.get("LANES_KAFKA_CA_FILE") == "OTHER_CA":
        other = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(other))
        change = {"LANES_KAFKA_CA_FILE": str(other)}
    env.update(change)
    started = time.monotonic()
    refused, output = run_router_refused(env)
    took = time.monotonic() - started
    assert reason in refused, output[-3000:]
    assert password not in output and "not-the-password" not in output
    assert took < 60, took  # not a hang


def test_a_missing_right_stops_the_component_naming_the_topic_and_operation(
    settings: Settings, secured: tuple[KafkaProcess, LocalSecurity]
) -> None:
    """The router run as a principal an operator gave the wrong rights: everything it reads,
    but no Write on the lanes. It takes a request, cannot route it, and stops with one line
    naming the principal, the operation and the topic: a mistaken ACL, not a hang."""
    import asyncio
    import os

    from schemas.topics import Groups, Topics
    from services.apps.kafka_acls import Rule
    from services.apps.registry import child_env
    from services.kafka.clients import ensure_topics
    from tests.support import produce_raw

    kafka, security = secured
    admin = as_admin(settings, kafka, security)
    topics, groups = Topics(admin.topic_prefix), Groups(admin.cluster.group_prefix)
    asyncio.run(ensure_topics(admin, topics.specs(load_routes(None).lanes)))
    user = "lanes-sdk"
    apply_rules(
        admin,
        [
            Rule(user, "topic", topics.requests, "literal", "Read"),
            Rule(user, "topic", topics.control, "literal", "Read"),
            Rule(user, "topic", topics.workers, "literal", "Read"),
            Rule(user, "topic", topics.lane(""), "prefixed", "Describe"),
            Rule(user, "group", groups.router, "literal", "Read"),
            Rule(user, "group", groups.lane(""), "prefixed", "Describe"),
            Rule(user, "cluster", "kafka-cluster", "literal", "IdempotentWrite"),
        ],
    )
    from schemas.events import GenerationRequested
    from schemas.spec import GenerationSpec

    event = GenerationRequested(
        job_id="job_acl", spec=GenerationSpec(prompt="a cup", intent="draft"), fingerprint="f"
    )
    asyncio.run(produce_raw(admin, topics.requests, event.to_bytes(), key=b"job_acl"))
    env = child_env(
        admin,
        os.environ,
        LANES_KAFKA_USERNAME=user,
        LANES_KAFKA_PASSWORD=security.passwords()[user],
    )
    refused, _ = run_router_refused(env)
    assert f"{user!r} may not Write topic {topics.lane('draft')}" in refused, refused
