"""The control plane's rules: apply one ops command to a lane's desired state."""

from __future__ import annotations

from schemas.control import Canary, LaneDesired, ModelRef, OpsCommand
from schemas.events import utcnow
from services.config.routes import Routes
from services.exceptions import Rejected

__all__ = ["Rejected", "initial_state", "apply_command", "auto_rollback"]

RECENT = 100


def initial_state(routes: Routes, lane: str) -> LaneDesired:
    spec = routes.lanes[lane]
    return LaneDesired(
        lane=lane, stable=ModelRef(model=spec.model, version=routes.models[spec.model].version)
    )


def _ref(routes: Routes, cmd: OpsCommand) -> ModelRef:
    """The routes file's model by name, or a new version given its checkpoint or tiny seed."""
    if cmd.model is None:
        raise Rejected("name a model (--model)")
    if cmd.path is not None or cmd.tiny_seed is not None:
        if cmd.version is None:
            raise Rejected("a new model version needs --version")
        if cmd.path is not None and cmd.tiny_seed is not None:
            raise Rejected("give either --path or --tiny-seed, not both")
        return ModelRef(
            model=cmd.model, version=cmd.version, path=cmd.path, tiny_seed=cmd.tiny_seed
        )
    name, _ = routes.resolve_model(cmd.model)  # a retired alias means its successor
    if name not in routes.models:
        raise Rejected(
            f"unknown model {cmd.model!r}; the routes file has {sorted(routes.models)} "
            "(or give --version with --path or --tiny-seed)"
        )
    ref = ModelRef(model=name, version=routes.models[name].version)
    if cmd.version is not None and cmd.version != ref.version:
        raise Rejected(
            f"{cmd.model} is version {ref.version} in the routes file, not {cmd.version}"
        )
    return ref


def apply_command(state: LaneDesired, cmd: OpsCommand, routes: Routes) -> LaneDesired:
    """The next desired state (revision + 1), or Rejected with the reason."""
    if cmd.command_id in state.recent_commands:
        raise Rejected(f"command {cmd.command_id} was already applied (replay)")
    update: dict[str, object] = {}
    if cmd.action == "deploy":
        target = _ref(routes, cmd)
        if target == state.stable and state.canary is None:
            raise Rejected(f"{target.model} {target.version} is already stable on {cmd.lane}")
        update = {"previous": state.stable, "stable": target, "canary": None}
    elif cmd.action == "canary":
        target = _ref(routes, cmd)
        if cmd.percent is None:
            raise Rejected("a canary needs --percent (1-99)")
        if target == state.stable:
            raise Rejected(f"{target.model} {target.version} is already the stable version")
        update = {"canary": Canary(target=target, percent=cmd.percent)}
    elif cmd.action == "promote":
        if state.canary is None:
            raise Rejected(f"lane {cmd.lane} has no canary to promote")
        update = {"previous": state.stable, "stable": state.canary.target, "canary": None}
    elif cmd.action == "rollback":
        if state.canary is not None:
            update = {"canary": None}  # rolling back a canary drops it
        elif state.previous is not None:
            update = {"stable": state.previous, "previous": state.stable}
        else:
            raise Rejected(f"lane {cmd.lane} has nothing to roll back to")
    elif cmd.action == "set":
        if cmd.max_concurrency is None and cmd.sample_steps is None:
            raise Rejected("set needs --max-concurrency and/or --steps")
        update = {
            k: v
            for k, v in (
                ("max_concurrency", cmd.max_concurrency),
                ("sample_steps", cmd.sample_steps),
            )
            if v is not None
        }
    elif cmd.action in ("pause", "resume"):
        paused = cmd.action == "pause"
        if state.paused == paused:
            raise Rejected(f"lane {cmd.lane} is already {'paused' if paused else 'running'}")
        update = {"paused": paused}
    elif cmd.action == "restart":
        update = {"restart_generation": state.restart_generation + 1}
    return state.model_copy(
        update={
            **update,
            "revision": state.revision + 1,
            "reason": cmd.reason or cmd.action,
            "actor": f"ops:{cmd.issuer}",
            "updated_at": utcnow(),
            "recent_commands": [*state.recent_commands[-(RECENT - 1) :], cmd.command_id],
        }
    )


def auto_rollback(state: LaneDesired, bad: ModelRef, reason: str) -> LaneDesired | None:
    """The state without ``bad`` (a canary is dropped, a fresh deploy returns to the previous
    version), or None when ``bad`` is neither the canary nor a stable version with a previous."""
    if state.canary is not None and state.canary.target == bad:
        update: dict[str, object] = {"canary": None}
    elif state.stable == bad and state.previous is not None:
        update = {"stable": state.previous, "previous": None}
    else:
        return None
    return state.model_copy(
        update={
            **update,
            "revision": state.revision + 1,
            "reason": f"automatic rollback: {reason}"[:500],
            "actor": "control-plane",
            "updated_at": utcnow(),
        }
    )
