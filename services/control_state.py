"""The control plane's rules: apply one ops command to a lane's desired state."""

from __future__ import annotations

from schemas.control import Canary, LaneDesired, ModelRef, OpsCommand
from schemas.events import utcnow
from services.routes import Routes

__all__ = ["Rejected", "initial_state", "apply_command"]

RECENT = 100


class Rejected(Exception):
    """The command is valid and authentic but does not apply to the current state."""


def initial_state(routes: Routes, lane: str) -> LaneDesired:
    spec = routes.lanes[lane]
    return LaneDesired(lane=lane, stable=ModelRef(model=spec.model,
                                                  version=routes.models[spec.model].version))


def _ref(routes: Routes, model: str | None) -> ModelRef:
    if model is None:
        raise Rejected("name a model (--model)")
    if model not in routes.models:
        raise Rejected(f"unknown model {model!r}; the routes file has {sorted(routes.models)}")
    return ModelRef(model=model, version=routes.models[model].version)


def apply_command(state: LaneDesired, cmd: OpsCommand, routes: Routes) -> LaneDesired:
    """The next desired state (revision + 1), or Rejected with the reason."""
    if cmd.command_id in state.recent_commands:
        raise Rejected(f"command {cmd.command_id} was already applied (replay)")
    update: dict[str, object] = {}
    if cmd.action == "deploy":
        target = _ref(routes, cmd.model)
        if target == state.stable and state.canary is None:
            raise Rejected(f"{target.model} {target.version} is already stable on {cmd.lane}")
        update = {"previous": state.stable, "stable": target, "canary": None}
    elif cmd.action == "canary":
        target = _ref(routes, cmd.model)
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
        update = {k: v for k, v in (("max_concurrency", cmd.max_concurrency),
                                    ("sample_steps", cmd.sample_steps)) if v is not None}
    elif cmd.action in ("pause", "resume"):
        paused = cmd.action == "pause"
        if state.paused == paused:
            raise Rejected(f"lane {cmd.lane} is already {'paused' if paused else 'running'}")
        update = {"paused": paused}
    elif cmd.action == "restart":
        update = {"restart_generation": state.restart_generation + 1}
    return state.model_copy(update={
        **update, "revision": state.revision + 1, "reason": cmd.reason or cmd.action,
        "updated_at": utcnow(),
        "recent_commands": [*state.recent_commands[-(RECENT - 1):], cmd.command_id],
    })
