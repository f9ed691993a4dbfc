"""`lanes keys`: create, list and revoke API keys (records on ``lanes.keys``)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import typer

from services.apps.cli_settings import settings_from_env

__all__ = ["keys_app"]

keys_app = typer.Typer(no_args_is_help=True, help="API keys: create, list, revoke")


def _expiry(value: str | None) -> datetime | None:
    """``30d``, ``12h``, ``90m`` from now, or an ISO 8601 time."""
    if value is None:
        return None
    units = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
    if value[:-1].isdigit() and value[-1] in units:
        return datetime.now(UTC) + timedelta(**{units[value[-1]]: int(value[:-1])})
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r}: use 30d, 12h, 90m or an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@keys_app.command("create")
def create(
    tenant: str = typer.Option(..., help="the tenant every job of this key belongs to"),
    scopes: str = typer.Option(
        "generations:read,generations:write",
        help="comma-separated: generations:read, generations:write, admin",
    ),
    name: str = typer.Option("", help="what the key is for (shown by list)"),
    expires: str | None = typer.Option(None, help="30d, 12h, 90m, or an ISO 8601 time"),
) -> None:
    """Mint a key. It is printed once, alone on the last line; only its hash is stored."""
    from pydantic import ValidationError

    from services.auth.key_admin import create_key

    chosen = [s.strip() for s in scopes.split(",") if s.strip()]
    try:
        key, record = asyncio.run(
            create_key(settings_from_env(), tenant, chosen, name=name, expires_at=_expiry(expires))  # type: ignore[arg-type]
        )
    except ValidationError as exc:
        typer.echo(f"invalid key: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"key id:  {record.key_id}")
    typer.echo(f"tenant:  {record.tenant}")
    typer.echo(f"scopes:  {','.join(record.scopes)}")
    typer.echo(f"expires: {record.expires_at.isoformat() if record.expires_at else 'never'}")
    typer.echo("the key (shown once; store it now):")
    typer.echo(key)


@keys_app.command("list")
def list_() -> None:
    """Every key: id, tenant, scopes, state, expiry, name (never a secret)."""
    from services.auth.key_admin import list_keys

    now = datetime.now(UTC)
    typer.echo(f"{'ID':12}  {'TENANT':16}  {'STATE':8}  {'EXPIRES':25}  {'SCOPES':40}  NAME")
    for r in asyncio.run(list_keys(settings_from_env())):
        state = (
            "revoked"
            if r.revoked
            else "expired"
            if r.expires_at is not None and r.expires_at <= now
            else "live"
        )
        expires = r.expires_at.isoformat(timespec="seconds") if r.expires_at else "never"
        typer.echo(
            f"{r.key_id:12}  {r.tenant:16}  {state:8}  {expires:25}  "
            f"{','.join(r.scopes):40}  {r.name}"
        )


@keys_app.command("revoke")
def revoke(key_id: str) -> None:
    """Revoke a key: every gateway replica refuses it within seconds."""
    from services.auth.key_admin import UnknownKey, revoke_key

    try:
        record = asyncio.run(revoke_key(settings_from_env(), key_id))
    except UnknownKey as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo(f"revoked {record.key_id} (tenant {record.tenant})")


@keys_app.command("control-keypair")
def control_keypair() -> None:
    """A new Ed25519 pair for lanes.control: the private key is the control plane's
    LANES_CONTROL_SIGNING_KEY (its Secret only), the public one every component's
    LANES_CONTROL_VERIFY_KEYS (add it beside the old one to rotate)."""
    from services.signing.control import generate_keypair

    private, public = generate_keypair()
    typer.echo(f"LANES_CONTROL_VERIFY_KEYS={public}")
    typer.echo(f"LANES_CONTROL_SIGNING_KEY={private}")
