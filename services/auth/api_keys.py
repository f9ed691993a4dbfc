"""API keys: ``lanes_<key id>_<secret>``, shown once, stored as a SHA-256 hash.

The prefix makes a leaked key recognisable to secret scanners (as GitHub's ``ghp_`` and
Stripe's ``sk_live_`` are); the key id finds the record without a scan; the secret is 40
base62 characters (238 bits). A check is a constant-time compare of hashes.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime

from schemas.keys import ApiKeyRecord, Scope

__all__ = [
    "Identity",
    "InvalidKey",
    "new_key",
    "hash_key",
    "check_key",
    "parse_bearer",
    "KEY_PATTERN",
]

KEY_PATTERN = re.compile(r"^lanes_([a-z0-9]{12})_([A-Za-z0-9]{40})$")
_ID_ALPHABET = string.ascii_lowercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits
# One answer for every way a key can be wrong: it must not say which part was.
INVALID = "the API key is missing, malformed, unknown, expired or revoked"


class InvalidKey(Exception):
    """Authentication failed (a 401); the message never says which check failed."""

    def __init__(self) -> None:
        super().__init__(INVALID)


@dataclass(frozen=True)
class Identity:
    """The caller a request acts as: the key's id, tenant and scopes."""

    key_id: str
    tenant: str
    scopes: frozenset[str]
    name: str = ""

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes

    def can(self, scope: Scope) -> bool:
        """``admin`` holds every scope."""
        return self.admin or scope in self.scopes

    def sees(self, tenant: str | None) -> bool:
        """Whether a job of ``tenant`` is visible to this caller (admins see every one)."""
        return self.admin or tenant == self.tenant


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(
    tenant: str,
    scopes: list[Scope],
    *,
    name: str = "",
    expires_at: datetime | None = None,
    now: datetime | None = None,
) -> tuple[str, ApiKeyRecord]:
    """A fresh key (the string to hand out once) and the record to publish."""
    key_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))
    secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(40))
    key = f"lanes_{key_id}_{secret}"
    record = ApiKeyRecord(
        key_id=key_id,
        tenant=tenant,
        scopes=sorted(set(scopes)),
        name=name,
        created_at=now or datetime.now(UTC),
        expires_at=expires_at,
        hash=hash_key(key),
    )
    return key, record


def parse_bearer(header: str | None) -> str:
    """The key in ``Authorization: Bearer <key>``; InvalidKey for anything else."""
    scheme, _, value = (header or "").strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not KEY_PATTERN.match(value):
        raise InvalidKey()
    return value


def check_key(key: str, record: ApiKeyRecord | None, now: datetime | None = None) -> Identity:
    """The identity ``key`` proves against its record; InvalidKey if it proves none."""
    match = KEY_PATTERN.match(key)
    # Hash even when there is no record, so an unknown id costs what a wrong secret does.
    given = hash_key(key)
    expected = record.hash if record is not None else "0" * 64
    if not hmac.compare_digest(given, expected) or match is None or record is None:
        raise InvalidKey()
    if record.key_id != match.group(1) or record.revoked:
        raise InvalidKey()
    if record.expires_at is not None and record.expires_at <= (now or datetime.now(UTC)):
        raise InvalidKey()
    return Identity(record.key_id, record.tenant, frozenset(record.scopes), record.name)
