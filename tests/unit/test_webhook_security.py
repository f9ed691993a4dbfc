from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from services.settings import PLACEHOLDER_WEBHOOK_SECRET
from services.webhooks import RefusedTarget, resolve_target, sign_headers


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/h", "http://localhost:8080/h", "http://10.0.0.1/h", "http://192.168.1.5/h",
    "http://169.254.169.254/latest/meta-data", "http://[::1]/h", "http://[::ffff:127.0.0.1]/h",
    "http://0.0.0.0/h", "ftp://example.com/h",
])
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
    headers = sign_headers(PLACEHOLDER_WEBHOOK_SECRET, "msg_j_succeeded", body, at)
    # Independent computation: HMAC-SHA256 over "id.timestamp.body", base64, "v1," prefix.
    key = base64.b64decode(PLACEHOLDER_WEBHOOK_SECRET.removeprefix("whsec_"))
    mac = hmac.new(key, f"msg_j_succeeded.{int(at.timestamp())}.{body}".encode(), hashlib.sha256)
    assert headers["webhook-signature"] == "v1," + base64.b64encode(mac.digest()).decode()
    Webhook(PLACEHOLDER_WEBHOOK_SECRET).verify(body, headers)  # raises if invalid
    with pytest.raises(Exception):
        Webhook(PLACEHOLDER_WEBHOOK_SECRET).verify(body.replace('"j"', '"k"'), headers)
