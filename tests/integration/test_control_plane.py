"""Control plane over Kafka: signed ops commands -> lanes.control (real broker)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from consumers import control
from producers.ops import sign_command
from schemas.control import LaneDesired, ModelRef, OpsCommand, OpsResult
from schemas.topics import Topics
from services.apps.in_process import LocalStack
from services.apps.ops_client import lane_states, send_and_wait
from services.config.routes import load_routes
from services.config.settings import Settings
from services.kafka.clients import ensure_topics
from services.kafka.control_view import ControlView
from services.signing.control import ControlSigner, generate_keypair
from tests.support import produce_raw, read_topic, wait_until

pytestmark = [pytest.mark.kafka]


@pytest.fixture
async def plane(settings: Settings) -> AsyncIterator[LocalStack]:
    stack = LocalStack(settings, worker_lanes=[], with_webhooks=False)
    routes = load_routes(None)
    await ensure_topics(
        settings, Topics(settings.topic_prefix).specs(routes.lanes, routes.spill_lanes)
    )
    stack.start_component("control", lambda stop: control.run(settings, stop))
    try:
        yield stack
    finally:
        await stack.stop()


async def _ops(settings: Settings, action: str, **kw: object) -> OpsResult:
    return await send_and_wait(settings, OpsCommand(action=action, lane="draft", **kw))  # type: ignore[arg-type]


async def test_deploy_canary_promote_rollback_with_revisions(
    settings: Settings, plane: LocalStack
) -> None:
    r = await _ops(settings, "deploy", model="tiny-sd-b")
    assert (r.outcome, r.revision) == ("applied", 1)
    r = await _ops(settings, "canary", model="tiny-sd", percent=50)
    assert (r.outcome, r.revision) == ("applied", 2)
    state = (await lane_states(settings))["draft"]
    assert (
        state.stable.model == "tiny-sd-b"
        and state.canary is not None
        and state.canary.percent == 50
    )
    assert (await _ops(settings, "promote")).revision == 3
    state = (await lane_states(settings))["draft"]
    assert (state.stable.model, state.previous.model if state.previous else None) == (
        "tiny-sd",
        "tiny-sd-b",
    )
    assert (await _ops(settings, "rollback", reason="bad outputs")).revision == 4
    state = (await lane_states(settings))["draft"]
    assert state.stable.model == "tiny-sd-b" and state.reason == "bad outputs"
    # Invalid for the current state: rejected with the reason, nothing published.
    bad = await _ops(settings, "promote")
    assert bad.outcome == "rejected" and "no canary" in (bad.reason or "")
    bad = await _ops(settings, "deploy", model="nope")
    assert bad.outcome == "rejected" and "unknown model" in (bad.reason or "")
    assert (await lane_states(settings))["draft"].revision == 4


async def test_forged_replayed_and_stale_commands_are_never_applied(
    settings: Settings, plane: LocalStack
) -> None:
    topics = Topics(settings.topic_prefix)
    cmd = OpsCommand(action="pause", lane="draft")
    forged = sign_command(cmd, "whsec_" + "d3Jvbmcta2V5LXdyb25nLWtleQ==")
    stale_cmd = OpsCommand(action="pause", lane="draft")
    stale = sign_command(
        stale_cmd,
        settings.control.ops_key.get_secret_value(),
        at=datetime.now(UTC) - timedelta(hours=1),
    )
    for signed in (forged, stale):
        await produce_raw(settings, topics.ops, signed.model_dump_json().encode(), b"draft")
    unsigned = {
        "id": cmd.command_id,
        "timestamp": "0",
        "signature": "",
        "payload": cmd.model_dump_json(),
    }
    import json

    await produce_raw(settings, topics.ops, json.dumps(unsigned).encode(), b"draft")
    good = sign_command(
        OpsCommand(action="pause", lane="draft"), settings.control.ops_key.get_secret_value()
    )
    await produce_raw(settings, topics.ops, good.model_dump_json().encode(), b"draft")
    await produce_raw(settings, topics.ops, good.model_dump_json().encode(), b"draft")  # replay

    async def five_results() -> bool:
        return len(await read_topic(settings, topics.ops_results)) >= 5

    await wait_until(five_results, timeout=30, what="5 ops results")
    results = [
        OpsResult.model_validate_json(r.value)
        for r in await read_topic(settings, topics.ops_results)
    ]
    outcomes = [(r.outcome, (r.reason or "")[:20]) for r in results]
    assert [o for o, _ in outcomes] == ["rejected", "rejected", "rejected", "applied", "rejected"]
    assert all(reason.startswith("not authentic") for _, reason in outcomes[:3])
    assert "replay" in (results[4].reason or "")
    verifier = settings.control_verifier()
    states = [verifier.parse(r.value) for r in await read_topic(settings, topics.control)]
    assert [(s.revision, s.paused) for s in states] == [(1, True)]


async def test_restarted_control_plane_reports_the_same_state(
    settings: Settings, plane: LocalStack
) -> None:
    await _ops(settings, "deploy", model="tiny-sd-b")
    await _ops(settings, "set", max_concurrency=8, sample_steps=3)
    before = (await lane_states(settings))["draft"]
    await plane.stop_component("control")
    plane.start_component("control", lambda stop: control.run(settings, stop))
    r = await _ops(settings, "canary", model="tiny-sd", percent=10)
    assert (r.outcome, r.revision) == ("applied", before.revision + 1)  # continues, not restarted
    after = (await lane_states(settings))["draft"]
    assert (after.stable, after.max_concurrency, after.sample_steps) == (before.stable, 8, 3)


async def test_a_control_record_not_signed_by_the_control_plane_changes_nothing(
    settings: Settings, plane: LocalStack
) -> None:
    """Anyone who can write lanes.control (no ACLs on this broker) tries to switch the lane:
    unsigned, signed with another key, a tampered payload, a tombstone. `lanes ops status`
    and every follower keep the control plane's last state, and count the refusals."""
    assert (await _ops(settings, "deploy", model="tiny-sd-b")).outcome == "applied"
    topic = Topics(settings.topic_prefix).control
    genuine = (await read_topic(settings, topic))[-1].value
    forged = LaneDesired.model_validate_json(
        settings.control_verifier().parse(genuine).model_dump_json()
    ).model_copy(update={"revision": 99, "stable": ModelRef(model="evil", version="x")})
    other_key, _ = generate_keypair()
    envelope = json.loads(genuine)
    tampered = json.dumps({**envelope, "payload": forged.model_dump_json()}).encode()
    for value in (
        forged.model_dump_json().encode(),  # unsigned
        ControlSigner(other_key).sign(forged),  # another key
        tampered,  # the genuine signature over another payload
        None,  # a tombstone
    ):
        await produce_raw(settings, topic, value, key=b"draft")
    state = (await lane_states(settings))["draft"]
    assert (state.stable.model, state.revision) == ("tiny-sd-b", 1)
    registry = CollectorRegistry()
    view = ControlView(settings, registry)
    await view.load()
    assert view.items["draft"].stable.model == "tiny-sd-b"
    refused = {
        reason: registry.get_sample_value(
            "lanes_control_records_rejected_total", {"reason": reason}
        )
        for reason in (
            "unsigned control record",
            "control record signed by an unknown key",
            "control record with a wrong signature",
            "tombstone",
        )
    }
    assert refused == dict.fromkeys(refused, 1.0), refused
    # The control plane itself still works from its last valid state.
    assert (await _ops(settings, "rollback")).revision == 2
