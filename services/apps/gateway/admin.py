"""``/v1/admin/*``: rollout state, for keys with the ``admin`` scope."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request

from services.apps.gateway.deps import Admin
from services.apps.problems import problems
from services.domain.rollout import LaneRollout

__all__ = ["router"]

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.get("/lanes", responses=problems(401, 403))
async def admin_lanes(request: Request, caller: Admin) -> list[LaneRollout]:
    """Every lane: desired model versions, canary, caps, and each worker instance."""
    return request.app.state.views.rollout.lanes()  # type: ignore[no-any-return]


@router.get("/lanes/{lane}", responses=problems(401, 403, 404))
async def admin_lane(lane: str, request: Request, caller: Admin) -> LaneRollout:
    for item in request.app.state.views.rollout.lanes():
        if item.lane == lane:
            return item  # type: ignore[no-any-return]
    raise HTTPException(404, f"no lane {lane!r}")
