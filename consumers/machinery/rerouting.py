"""Moving a job to a new attempt on another (or the same) lane: one builder for every hop
that does it (the worker's out-of-memory fallback and canary retry, the verifier's
typography rerender)."""

from __future__ import annotations

from consumers.machinery.loop import Output
from schemas.events import GenerationRouted, RenderRerouted
from schemas.topics import Topics

__all__ = ["reroute"]


def reroute(
    topics: Topics,
    routed: GenerationRouted,
    from_lane: str,
    *,
    failed: tuple[str, str] | None = None,
) -> list[Output]:
    """The reroute record on ``lanes.renders`` first (the job view must know the new attempt
    is coming), then ``routed`` on its lane's queue. ``failed``: the (model, version) that
    could not serve the job, which the canary judge counts as a failure."""
    model, version = failed or (None, None)
    rerouted = RenderRerouted(
        job_id=routed.job_id,
        producer=routed.producer,
        lane=from_lane,
        to_lane=routed.lane,
        reason=routed.reason or "",
        attempt=routed.attempt,
        model=model,
        version=version,
    )
    return [
        Output(topics.renders, routed.job_id, rerouted.to_bytes()),
        Output(topics.lane(routed.lane), routed.job_id, routed.to_bytes()),
    ]
