"""Signed ``lanes.control`` records: only the control plane can make a lane's desired state.

The control plane signs each ``LaneDesired`` with an Ed25519 private key that only it holds;
every follower (workers, router, verifier, gateway, `lanes ops status`) holds the public
keys and ignores a record whose signature is missing or wrong, keeping the last valid
state. Asymmetric on purpose: a follower that can verify cannot forge (an HMAC key would let
any compromised worker write desired states). Rotation: followers accept several public keys.

Record value: ``{"payload": "<LaneDesired JSON>", "signature": "<base64>", "key_id": "<8 hex>"}``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from schemas.control import LaneDesired

__all__ = [
    "ControlSigner",
    "ControlVerifier",
    "ForgedRecord",
    "generate_keypair",
    "dev_private_key",
    "public_key_of",
]

_DEV_SEED = hashlib.sha256(b"lanes-local-control-key-dev-only").digest()


class ForgedRecord(ValueError):
    """A control record without a valid signature of a trusted key."""


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _key_id(public: bytes) -> str:
    return hashlib.sha256(public).hexdigest()[:8]


def dev_private_key() -> str:
    """The local profile's fixed key (base64): production refuses it."""
    return base64.b64encode(_DEV_SEED).decode()


def public_key_of(private_b64: str) -> str:
    private = Ed25519PrivateKey.from_private_bytes(base64.b64decode(private_b64))
    return base64.b64encode(_raw_public(private.public_key())).decode()


def generate_keypair() -> tuple[str, str]:
    """A new (private, public) pair, base64: the control plane's secret and what the
    followers trust."""
    private = Ed25519PrivateKey.generate()
    raw = private.private_bytes_raw()
    return base64.b64encode(raw).decode(), base64.b64encode(
        _raw_public(private.public_key())
    ).decode()


class ControlSigner:
    def __init__(self, private_b64: str) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(private_b64))
        self.key_id = _key_id(_raw_public(self._key.public_key()))

    def sign(self, desired: LaneDesired) -> bytes:
        payload = desired.model_dump_json()
        signature = base64.b64encode(self._key.sign(payload.encode())).decode()
        return json.dumps(
            {"payload": payload, "signature": signature, "key_id": self.key_id},
            separators=(",", ":"),
        ).encode()


class ControlVerifier:
    def __init__(self, public_keys_b64: Sequence[str]) -> None:
        self._keys = {
            _key_id(raw): Ed25519PublicKey.from_public_bytes(raw)
            for raw in (base64.b64decode(k) for k in public_keys_b64)
        }

    def parse(self, value: bytes) -> LaneDesired:
        """The desired state a record carries, if a trusted key signed it; ForgedRecord
        (with the reason) otherwise."""
        try:
            envelope = json.loads(value)
            payload, signature = envelope["payload"], envelope["signature"]
            key = self._keys.get(str(envelope.get("key_id", "")))
        except (ValueError, KeyError, TypeError) as exc:
            raise ForgedRecord("unsigned control record") from exc
        if key is None:
            raise ForgedRecord("control record signed by an unknown key")
        try:
            key.verify(base64.b64decode(signature), str(payload).encode())
        except (InvalidSignature, ValueError) as exc:
            raise ForgedRecord("control record with a wrong signature") from exc
        return LaneDesired.model_validate_json(payload)
