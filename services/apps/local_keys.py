"""The local stack's own keys: `lanes up` mints a tenant key and an admin key on first start
and keeps them under ``<state dir>/credentials`` (mode 0600), where `lanes submit` and the
console's newcomer find them; ``LANES_API_KEY`` overrides the file."""

from __future__ import annotations

import os
from pathlib import Path

from schemas.keys import Scope
from services.auth.api_keys import KEY_PATTERN, hash_key
from services.auth.key_admin import create_key, list_keys
from services.config.settings import Settings

__all__ = ["ensure_local_keys", "local_key", "credentials_dir", "LOCAL_TENANT"]

LOCAL_TENANT = "local"
FILES = {"tenant": "api-key", "admin": "admin-api-key"}


def credentials_dir(settings: Settings) -> Path:
    return (settings.storage.state_dir / "credentials").resolve()


def local_key(settings: Settings, which: str = "tenant") -> str | None:
    """``LANES_API_KEY`` if set, else the key `lanes up` saved (None: neither)."""
    if settings.gateway.api_key is not None:
        return settings.gateway.api_key.get_secret_value()
    path = credentials_dir(settings) / FILES[which]
    return path.read_text().strip() if path.exists() else None


async def ensure_local_keys(settings: Settings) -> dict[str, Path]:
    """Mint the local tenant and admin keys unless the saved ones are still live on this
    cluster (a wiped broker forgets them: then new ones are made). Returns the files."""
    folder = credentials_dir(settings)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    live = {r.hash for r in await list_keys(settings) if not r.revoked}
    paths: dict[str, Path] = {}
    for which, filename in FILES.items():
        path = folder / filename
        saved = path.read_text().strip() if path.exists() else ""
        if not (KEY_PATTERN.match(saved) and hash_key(saved) in live):
            scopes: list[Scope] = (
                ["admin"] if which == "admin" else ["generations:read", "generations:write"]
            )
            key, _ = await create_key(
                settings,
                LOCAL_TENANT if which == "tenant" else "ops",
                scopes,
                name=f"local {which}",
            )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(key + "\n")
        paths[which] = path
    return paths
