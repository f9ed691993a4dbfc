"""Faults at the broker, with jobs in flight and webhooks: a 3-node KRaft cluster on
loopback (replication 3, min.insync.replicas 2) and a single node killed and restarted.

Every accepted job ends, with exactly one terminal webhook; below min ISR the gateway
answers 503 with Retry-After (never a 500 or a hang) and accepts again once a broker is
back. The clients ride through elections and coordinator moves (a component that crashed
fails ``check_alive``)."""

from __future__ import annotations

import asyncio
import collections
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from producers.kafka import make_admin
from schemas.topics import Topics
from services.config.routes import load_routes
from services.config.settings import Settings
from services.kafka.clients import ensure_topics
from services.kafka.local_broker import KafkaCluster, KafkaProcess, free_port
from tests.support import Stack, WebhookReceiver, running_stack

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(600)]

TERMINAL = {"generation.succeeded", "generation.failed", "generation.canceled"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    kafka = KafkaCluster(tmp_path_factory.mktemp("cluster"), size=3)
    try:
        kafka.start()
    except Exception as exc:
        pytest.fail(f"the 3-node cluster did not start: {exc}")
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture
async def on_cluster(settings: Settings, cluster: KafkaCluster) -> AsyncIterator[Settings]:
    """The test's settings on the cluster; every node is running again afterwards."""
    yield settings.model_copy(
        update={
            "kafka_bootstrap": cluster.bootstrap,
            "topic_replication_factor": cluster.replication,
            "topic_min_insync_replicas": cluster.min_isr,
            "publish_timeout_s": 5.0,
        }
    )
    for node in cluster.nodes:
        if not node.running:
            node.start()


async def leader_of(settings: Settings, topic: str, partition: int = 0) -> int:
    admin = make_admin(settings)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    (part,) = [p for p in described["partitions"] if p["partition"] == partition]
    return int(part["leader"])


async def submit(stack: Stack, body: dict[str, Any], timeout_s: float = 120) -> str:
    """POST until accepted, as a client does: a 503 is retried after its Retry-After with
    the same Idempotency-Key; anything else but 202 fails the test."""
    key = uuid.uuid4().hex
    deadline = time.monotonic() + timeout_s
    while True:
        resp = await stack.http.post("/v1/generations", json=body, headers={"Idempotency-Key": key})
        if resp.status_code == 202:
            return str(resp.json()["job_id"])
        assert resp.status_code == 503 and "Retry-After" in resp.headers, resp.text
        assert time.monotonic() < deadline, "never accepted"
        await asyncio.sleep(1)


async def all_end_once(
    stack: Stack, receiver: WebhookReceiver, ids: list[str], timeout_s: float = 240
) -> None:
    """Every job succeeds and gets exactly one terminal webhook."""
    for job_id in ids:
        job = await stack.wait_for_status(job_id, {"succeeded", "failed", "canceled"}, timeout_s)
        assert job["status"] == "succeeded", job
    await receiver.wait_for(len(ids), timeout=timeout_s)
    await asyncio.sleep(3)  # a duplicate would be on its way by now
    terminal = collections.Counter(
        body["data"]["job_id"]
        for body in (json.loads(d.body) for d in receiver.deliveries)
        if body["type"] in TERMINAL
    )
    assert {j: terminal[j] for j in ids} == {j: 1 for j in ids}


def _job(i: int, receiver: WebhookReceiver) -> dict[str, Any]:
    return {"prompt": f"a blue mug {i}", "intent": "draft", "webhook_url": receiver.url}


async def test_killing_the_lane_leader_loses_no_job_and_sends_each_webhook_once(
    on_cluster: Settings, cluster: KafkaCluster, receiver: WebhookReceiver
) -> None:
    async with running_stack(on_cluster, worker_lanes=["draft"]) as stack:
        await stack.wait_workers_ready(names=["draft"])
        ids = [await submit(stack, _job(i, receiver)) for i in range(6)]
        leader = await leader_of(on_cluster, stack.topics.lane("draft"))
        cluster.node(leader).kill()  # kill -9, jobs in flight
        ids += [await submit(stack, _job(i, receiver)) for i in range(6, 12)]
        await all_end_once(stack, receiver, ids)
        assert await leader_of(on_cluster, stack.topics.lane("draft")) != leader
        stack.check_alive()  # no component crashed on the election


async def test_below_min_isr_the_gateway_answers_503_and_accepts_again_when_a_broker_returns(
    on_cluster: Settings, cluster: KafkaCluster, receiver: WebhookReceiver
) -> None:
    # A publish gives up after 2 s here (5 s in the other tests): three 503s in 6 s, not 15.
    settings = on_cluster.model_copy(update={"publish_timeout_s": 2.0})
    async with running_stack(settings, worker_lanes=["draft"]) as stack:
        await stack.wait_workers_ready(names=["draft"])
        ids = [await submit(stack, _job(i, receiver)) for i in range(3)]
        down = [n for n in cluster.nodes if n.node_id != 1]
        for node in down:  # both at once: one at a time, the second waits on the quorum
            node.terminate()
        for node in down:
            node.wait_stopped(30)
        for i in range(3):  # each answered in bounded time: a 503 to retry, never a 500
            started = time.monotonic()
            resp = await stack.http.post("/v1/generations", json=_job(100 + i, receiver))
            assert resp.status_code == 503, resp.text
            assert resp.headers["Retry-After"] and "retry" in resp.json()["detail"]
            assert time.monotonic() - started < settings.gateway.publish_timeout_s + 5
        down[0].start()  # two of three: a quorum and min.insync.replicas again
        ids += [await submit(stack, _job(i, receiver)) for i in range(3, 6)]
        await all_end_once(stack, receiver, ids)
        stack.check_alive()


async def test_a_single_broker_killed_and_restarted_on_its_log_dir_loses_nothing(
    settings: Settings, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    broker = KafkaProcess(tmp_path / "kafka", port=free_port())
    broker.start()
    try:
        own = settings.model_copy(
            update={"kafka_bootstrap": broker.bootstrap, "publish_timeout_s": 5.0}
        )
        async with running_stack(own, worker_lanes=["draft"]) as stack:
            await stack.wait_workers_ready(names=["draft"])
            ids = [await submit(stack, _job(i, receiver)) for i in range(6)]
            broker.kill()
            await asyncio.sleep(2)
            broker.start()  # same port, same log dir
            ids += [await submit(stack, _job(i, receiver)) for i in range(6, 9)]
            await all_end_once(stack, receiver, ids)
            stack.check_alive()
    finally:
        broker.stop()


async def test_a_cluster_replicates_every_topic_as_settings_say(
    on_cluster: Settings,
) -> None:
    routes = load_routes(None)
    topics = Topics(on_cluster.topic_prefix)
    await ensure_topics(on_cluster, topics.specs(routes.lanes, routes.spill_lanes))
    names = [s.name for s in topics.specs(routes.lanes, routes.spill_lanes)]
    admin = make_admin(on_cluster)
    await admin.start()
    try:
        described = await admin.describe_topics(names)
        min_isr: dict[str, str] = {}
        for _ in range(20):  # a broker that has not yet applied the new topics says so
            responses = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
            )
            for response in responses:
                for error_code, _, _, name, entries in (r[:5] for r in response.resources):
                    value = {e[0]: e[1] for e in entries}.get("min.insync.replicas")
                    if error_code == 0 and value is not None:
                        min_isr[name] = value
            if set(min_isr) == set(names):
                break
            await asyncio.sleep(0.5)
    finally:
        await admin.close()
    for topic in described:
        assert all(len(p["replicas"]) == 3 for p in topic["partitions"]), topic["topic"]
    assert min_isr == {name: "2" for name in names}


def test_a_short_chaos_soak_loses_no_job_and_duplicates_no_webhook(
    cluster: KafkaCluster, tmp_path: Path
) -> None:
    """`lanes bench chaos`, briefly: components killed every 5 s, a broker for 5 s (on the
    module's cluster: the soak's topics are its own)."""
    from services.apps.bench.chaos import ChaosConfig, run_chaos

    cfg = ChaosConfig(
        duration_s=20, rate_per_s=1.5, kill_every_s=5, broker_kill_at_s=8, broker_down_s=5
    )
    run_chaos(cfg, tmp_path, cluster)
    result = json.loads((tmp_path / "chaos.json").read_text())
    assert result["jobs accepted"] >= 25 and result["kills"] == 4, result
    assert result["lost"] == 0 and result["duplicate terminal webhooks"] == 0, result
    assert result["succeeded"] == result["jobs accepted"], result
    assert result["crashes (restarted)"] == 0, result  # no component died of a fault
