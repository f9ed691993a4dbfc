"""`lanes ops ...`: signed commands to the control plane, and the rollout status."""

from __future__ import annotations

import asyncio

import typer

from services.apps.cli_settings import settings_from_env

__all__ = ["ops_app"]

ops_app = typer.Typer(no_args_is_help=True, help="Operate lanes: model versions, canaries, caps")


def _ops(action: str, lane: str, **fields: object) -> None:
    import getpass

    from schemas.control import OpsCommand
    from services.apps.ops_client import send_and_wait

    command = OpsCommand(
        action=action,
        lane=lane,
        issuer=getpass.getuser(),
        **{k: v for k, v in fields.items() if v is not None},
    )
    result = asyncio.run(send_and_wait(settings_from_env(), command))
    if result.outcome == "applied":
        typer.echo(f"{action} {lane}: applied (revision {result.revision})")
    else:
        typer.echo(f"{action} {lane}: rejected: {result.reason}", err=True)
        raise typer.Exit(1)


LANE = typer.Option(..., "--lane", help="the lane to act on")


MODEL = typer.Option(..., help="a model from the routes file, or a new one's name")
VERSION = typer.Option(None, help="the version (required with --path or --tiny-seed)")
PATH = typer.Option(None, help="a local diffusers checkpoint directory for this version")
TINY_SEED = typer.Option(None, help="a tiny random-weight build with this seed")


@ops_app.command("deploy")
def ops_deploy(
    lane: str = LANE,
    model: str = MODEL,
    version: str | None = VERSION,
    path: str | None = PATH,
    tiny_seed: int | None = TINY_SEED,
    reason: str | None = None,
) -> None:
    """Make MODEL the lane's stable version (the current one is kept for rollback)."""
    _ops(
        "deploy", lane, model=model, version=version, path=path, tiny_seed=tiny_seed, reason=reason
    )


@ops_app.command("canary")
def ops_canary(
    lane: str = LANE,
    model: str = MODEL,
    version: str | None = VERSION,
    path: str | None = PATH,
    tiny_seed: int | None = TINY_SEED,
    percent: int = typer.Option(..., min=1, max=99),
    reason: str | None = None,
) -> None:
    """Send PERCENT of the lane's jobs (chosen by job id) to MODEL."""
    _ops(
        "canary",
        lane,
        model=model,
        version=version,
        path=path,
        tiny_seed=tiny_seed,
        percent=percent,
        reason=reason,
    )


@ops_app.command("promote")
def ops_promote(lane: str = LANE, reason: str | None = None) -> None:
    """Make the canary the stable version."""
    _ops("promote", lane, reason=reason)


@ops_app.command("rollback")
def ops_rollback(lane: str = LANE, reason: str | None = None) -> None:
    """Drop the canary, or return to the previous stable version."""
    _ops("rollback", lane, reason=reason)


@ops_app.command("set")
def ops_set(lane: str = LANE, max_concurrency: int | None = None, steps: int | None = None) -> None:
    """Change the lane's per-GPU concurrency cap and/or sample steps."""
    _ops("set", lane, max_concurrency=max_concurrency, sample_steps=steps)


@ops_app.command("pause")
def ops_pause(lane: str = LANE, reason: str | None = None) -> None:
    _ops("pause", lane, reason=reason)


@ops_app.command("resume")
def ops_resume(lane: str = LANE) -> None:
    _ops("resume", lane)


@ops_app.command("restart")
def ops_restart(lane: str = LANE) -> None:
    """Rolling restart of the lane's workers."""
    _ops("restart", lane)


@ops_app.command("status")
def ops_status() -> None:
    """Each lane's desired state, and each worker instance's rollout, instance by instance."""
    from services.config.routes import load_routes
    from services.domain.rollout import RolloutView

    settings = settings_from_env()
    view = RolloutView(settings, load_routes(settings.routes_file))
    asyncio.run(view.load())
    for item in view.lanes():
        d = item.desired
        canary = f"{d.canary.target.label} @ {d.canary.percent}%" if d.canary else "-"
        typer.echo(
            f"{item.lane}: rev {d.revision} stable {d.stable.label} canary {canary} "
            f"previous {d.previous.label if d.previous else '-'}"
            f"{' PAUSED' if d.paused else ''} cap {d.max_concurrency or 'routes'} "
            f"steps {d.sample_steps or 'routes'} restart-gen {d.restart_generation} "
            f"{'converged' if item.converged else 'rolling out'}"
            f"{f' ({d.actor}: {d.reason})' if d.revision else ''}"
        )
        for inst in item.instances:
            s = inst.status
            flags = [] if inst.live else ["gone"]
            if s.serves == "spill":
                flags.append("(serves the spill queue)")
            if not inst.current:
                flags.append(f"at rev {s.applied_revision}")
            flags += [f"failed to load {k}: {v}" for k, v in s.load_errors.items()]
            flags += [f"{k} {v}" for k, v in s.engine_states.items()]
            flags += [f"WARNING {n}" for n in s.notices]
            canary_part = f" + {s.canary.label} @ {s.canary_percent}%" if s.canary else ""
            typer.echo(
                f"  {s.instance:32} {s.health:10} {s.stable.label if s.stable else '-'}"
                f"{canary_part} in-flight {s.in_flight} done {s.jobs_done} gen "
                f"{s.restart_generation} {' '.join(flags)}"
            )
        if not item.instances:
            typer.echo("  (no worker has reported)")
