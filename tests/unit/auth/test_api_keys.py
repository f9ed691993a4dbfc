"""API keys, signed URLs and the failure throttle, on their own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from services.auth.api_keys import (
    KEY_PATTERN,
    InvalidKey,
    check_key,
    hash_key,
    new_key,
    parse_bearer,
)
from services.auth.throttle import FailureThrottle
from services.auth.url_signing import BadSignature, Expired, UrlSigner


def test_a_key_is_recognisable_random_and_stored_only_as_its_hash() -> None:
    key, record = new_key("acme", ["generations:read"], name="ci")
    other, _ = new_key("acme", ["generations:read"])
    assert KEY_PATTERN.match(key) and key.startswith(f"lanes_{record.key_id}_")
    assert key != other
    assert record.hash == hash_key(key) and key.split("_")[2] not in record.model_dump_json()
    assert check_key(key, record).tenant == "acme"


def test_every_wrong_key_fails_alike() -> None:
    key, record = new_key("acme", ["generations:read"])
    _, other = new_key("acme", ["generations:read"])
    cases = [
        (key[:-1] + ("a" if key[-1] != "a" else "b"), record),  # wrong secret
        (key, other),  # another key's record
        (key, None),  # unknown id
        (key, record.model_copy(update={"revoked": True})),
        (key, record.model_copy(update={"expires_at": datetime.now(UTC) - timedelta(1)})),
    ]
    messages = set()
    for given, rec in cases:
        with pytest.raises(InvalidKey) as err:
            check_key(given, rec)
        messages.add(str(err.value))
    assert len(messages) == 1 and key not in messages.pop()
    for header in (None, "", "Bearer", "Basic x", "Bearer lanes_x", f"Token {key}"):
        with pytest.raises(InvalidKey):
            parse_bearer(header)
    assert parse_bearer(f"Bearer {key}") == key and parse_bearer(f"bearer  {key} ") == key


def test_a_key_never_reaches_a_log_line() -> None:
    key, record = new_key("acme", ["admin"])
    with capture_logs() as logs:
        try:
            check_key(key[:-1] + "Z", record)
        except InvalidKey:
            pass
    assert key not in str(logs)


def test_signed_urls() -> None:
    signer = UrlSigner(b"k" * 32, ttl_s=60, retention_s=3600)
    url = "https://lanes.example/v1/generations/job_1/artifacts/a%20b.png"
    signed = signer.sign(url, signer.expiry(now=1000))
    query = dict(p.split("=") for p in signed.split("?")[1].split("&"))
    assert query["expires"] == "1060"
    signer.verify("job_1/artifacts/a b.png", query["expires"], query["sig"], now=1059)
    with pytest.raises(Expired):
        signer.verify("job_1/artifacts/a b.png", query["expires"], query["sig"], now=1061)
    with pytest.raises(BadSignature):
        signer.verify("job_2/artifacts/a b.png", query["expires"], query["sig"], now=1000)
    with pytest.raises(BadSignature):
        signer.verify("job_1/artifacts/a b.png", "2060", query["sig"], now=1000)
    # Rotation: a URL signed with the old key still verifies while it is "previous".
    rotated = UrlSigner(b"n" * 32, [b"k" * 32], ttl_s=60, retention_s=3600)
    rotated.verify("job_1/artifacts/a b.png", query["expires"], query["sig"], now=1000)
    dropped = UrlSigner(b"n" * 32, ttl_s=60, retention_s=3600)
    with pytest.raises(BadSignature):
        dropped.verify("job_1/artifacts/a b.png", query["expires"], query["sig"], now=1000)


def test_no_url_outlives_retention() -> None:
    signer = UrlSigner(b"k" * 32, ttl_s=86400, retention_s=3600)
    finished = datetime.fromtimestamp(10_000, UTC)
    assert signer.expiry(now=10_000, finished_at=finished) == 13_600
    assert signer.expiry(now=10_000, finished_at=None) == 96_400


def test_a_url_lives_at_least_its_ttl() -> None:
    # Rounded up to the second: a 1 s URL signed at 1000.9 still works at 1001.8.
    signer = UrlSigner(b"k" * 32, ttl_s=1, retention_s=3600)
    expires = signer.expiry(now=1000.9)
    assert expires == 1002
    url = signer.sign("https://g/v1/generations/j/image", expires)
    sig = url.split("sig=")[1]
    signer.verify("j/image", str(expires), sig, now=1001.8)


def test_webhook_bodies_are_signed_at_send_time() -> None:
    signer = UrlSigner(b"k" * 32, ttl_s=60, retention_s=10**9)
    body = '{"type":"generation.succeeded","data":{"delivered":{"uri":"https://g/v1/generations/j/artifacts/x.png"}}}'
    first = signer.sign_webhook_body(body, now=1000)
    later = signer.sign_webhook_body(body, now=5000)
    assert "expires=1060" in first and "expires=5060" in later
    assert signer.sign_webhook_body("not json") == "not json"


def test_the_throttle_refills() -> None:
    now = [0.0]
    throttle = FailureThrottle(2, 1.0, clock=lambda: now[0])
    assert throttle.wait_s("a") is None
    throttle.failed("a")
    throttle.failed("a")
    assert throttle.wait_s("a") == pytest.approx(1.0) and throttle.wait_s("b") is None
    now[0] += 1.0
    assert throttle.wait_s("a") is None
