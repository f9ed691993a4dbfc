from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as LibraryVerificationError

from producers.webhook_receiver import WebhookVerificationError, verify_delivery
from services.config.settings import PLACEHOLDER_WEBHOOK_SECRET, Settings
from services.webhooks.delivery import (
    RefusedTarget,
    backoff_delay,
    resolve_target,
    retry_after_seconds,
    sign_headers,
)

NEW = "whsec_" + base64.b64encode(b"rotated-in-key-0123456789").decode()
OTHER = "whsec_" + base64.b64encode(b"somebody-elses-key-98765").decode()
BODY = json.dumps({"type": "generation.succeeded", "data": {"job_id": "j"}})


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/h",
        "http://localhost:8080/h",
        "http://10.0.0.1/h",
        "http://192.168.1.5/h",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/h",
        "http://[::ffff:127.0.0.1]/h",
        "http://0.0.0.0/h",
        "ftp://example.com/h",
        "http://[fd00:ec2::254]/latest",
        "http://[fe80::1]/h",
        "http://[::ffff:169.254.169.254]/h",
        "http://100.64.0.1/h",
    ],
)
async def test_private_and_loopback_targets_are_refused(url: str) -> None:
    with pytest.raises(RefusedTarget):
        await resolve_target(url, allowed_hosts=[])


async def test_allowlisted_host_is_allowed() -> None:
    assert await resolve_target("http://127.0.0.1:9/h", allowed_hosts=["127.0.0.1"]) == "127.0.0.1"


async def test_public_address_is_allowed() -> None:
    assert await resolve_target("https://93.184.216.34/h", allowed_hosts=[]) == "93.184.216.34"


def test_signature_matches_the_spec_and_the_reference_verifier() -> None:
    body = json.dumps({"type": "generation.succeeded", "data": {"job_id": "j"}})
    at = datetime.now(UTC)
    headers = sign_headers([PLACEHOLDER_WEBHOOK_SECRET], "msg_j_succeeded", body, at)
    # Independent computation: HMAC-SHA256 over "id.timestamp.body", base64, "v1," prefix.
    key = base64.b64decode(PLACEHOLDER_WEBHOOK_SECRET.removeprefix("whsec_"))
    mac = hmac.new(key, f"msg_j_succeeded.{int(at.timestamp())}.{body}".encode(), hashlib.sha256)
    assert headers["webhook-signature"] == "v1," + base64.b64encode(mac.digest()).decode()
    Webhook(PLACEHOLDER_WEBHOOK_SECRET).verify(body, headers)  # raises if invalid
    with pytest.raises(LibraryVerificationError):
        Webhook(PLACEHOLDER_WEBHOOK_SECRET).verify(body.replace('"j"', '"k"'), headers)


def test_receiver_helper_accepts_valid_and_rotated_signatures() -> None:
    headers = sign_headers([NEW, PLACEHOLDER_WEBHOOK_SECRET], "msg_j_succeeded", BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2  # one per key during rotation
    # A receiver that still has only the old key, or already only the new one, verifies.
    assert verify_delivery(BODY, headers, PLACEHOLDER_WEBHOOK_SECRET)["data"]["job_id"] == "j"
    assert verify_delivery(BODY.encode(), headers, [NEW])["type"] == "generation.succeeded"
    # Several signatures, one valid (the reference verifier checks each).
    mixed = dict(headers, **{"webhook-signature": "v1,AAAA " + headers["webhook-signature"]})
    assert verify_delivery(BODY, mixed, [OTHER, NEW])


@pytest.mark.parametrize(
    "case",
    [
        "tampered",
        "wrong_secret",
        "stale",
        "future",
        "missing_id",
        "missing_signature",
        "missing_timestamp",
    ],
)
def test_receiver_helper_refuses_bad_deliveries(case: str) -> None:
    at = (
        datetime.now(UTC) - timedelta(minutes=10)
        if case == "stale"
        else datetime.now(UTC) + timedelta(minutes=10)
        if case == "future"
        else None
    )
    headers = sign_headers([NEW], "msg_j_succeeded", BODY, at)
    body, secrets = BODY, [NEW]
    if case == "tampered":
        body = BODY.replace('"j"', '"k"')
    if case == "wrong_secret":
        secrets = [OTHER, PLACEHOLDER_WEBHOOK_SECRET]
    if case.startswith("missing_"):
        headers.pop("webhook-" + case.removeprefix("missing_"))
    with pytest.raises(WebhookVerificationError):
        verify_delivery(body, headers, secrets)


def test_endpoint_secrets_replace_the_global_ones() -> None:
    keys = Settings(
        webhook_previous_secrets=NEW,  # type: ignore[arg-type]
        webhook_endpoint_secrets={"https://Hooks.Example.com": OTHER},
    ).signing_keys()
    assert keys.for_url("https://hooks.example.com/lanes?x=1") == [OTHER]
    assert keys.for_url("https://other.example.com/h") == [PLACEHOLDER_WEBHOOK_SECRET, NEW]


def test_retry_after_and_backoff_schedule() -> None:
    assert retry_after_seconds("120") == 120.0
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    assert retry_after_seconds("Wed, 25 Nov 2026 12:00:30 GMT", now) == 30.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None
    import random

    rng = random.Random(0)
    delays = [backoff_delay(n, 1.0, 3600, None, rng) for n in range(1, 8)]
    for n, d in enumerate(delays, start=1):
        assert 2 ** (n - 1) / 2 <= d <= 2 ** (n - 1)  # exponential, with jitter
    assert backoff_delay(1, 1.0, 3600, 90.0, rng) == 90.0  # Retry-After wins
    assert backoff_delay(1, 1.0, 60, 600.0, rng) == 60.0  # capped


async def test_oversized_payload_is_never_sent() -> None:
    from services.webhooks.delivery import SigningKeys, WebhookSender

    sender = WebhookSender(SigningKeys(NEW), ["127.0.0.1"], max_body_bytes=1024)
    try:
        result = await sender.attempt("http://127.0.0.1:9/h", "msg_x", "x" * 2000)
    finally:
        await sender.aclose()
    assert result.outcome == "failed" and "over the 1024-byte limit" in (result.error or "")


def test_documented_receiver_example_verifies_and_deduplicates(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pathlib import Path

    from fastapi.testclient import TestClient

    readme = (Path(__file__).parents[3] / "docs" / "webhooks.md").read_text()
    (block,) = [
        b.split("\n", 1)[1]
        for b in readme.split("```python")[1:]
        if "verify_delivery" in b.split("```")[0]
    ]
    code = block.split("```")[0].replace('SECRETS = ["whsec_..."]', f"SECRETS = [{NEW!r}]")
    scope: dict[str, object] = {}
    exec(compile(code, "docs/webhooks.md", "exec"), scope)  # noqa: S102 - our own documentation
    client = TestClient(scope["app"])  # type: ignore[arg-type]
    body = json.dumps(
        {"type": "generation.succeeded", "data": {"job_id": "j1", "status": "succeeded"}}
    )
    headers = sign_headers([NEW, PLACEHOLDER_WEBHOOK_SECRET], "msg_j1_succeeded", body)
    assert client.post("/lanes-webhooks", content=body, headers=headers).status_code == 200
    assert client.post("/lanes-webhooks", content=body, headers=headers).status_code == 200
    assert capsys.readouterr().out.count("generation.succeeded j1 succeeded") == 1  # deduplicated
    bad = sign_headers([OTHER], "msg_j1_succeeded", body)
    assert client.post("/lanes-webhooks", content=body, headers=bad).status_code == 400
