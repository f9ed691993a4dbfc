"""`lanes up` starts the light processes at once and the lane workers one after another,
the lanes a first job uses first."""

from __future__ import annotations

from services.apps.registry import components
from services.apps.start_order import lane_order, start_plan
from services.config.routes import load_routes


def test_the_default_routes_start_the_draft_lane_first_then_finals_and_their_refine_pass() -> None:
    routes = load_routes(None)
    order = lane_order(routes)
    assert order[:3] == ["draft", "final", "upscale"]  # intents, each then its cascade's lane
    assert sorted(order) == sorted(routes.lanes)  # every lane, once


def test_workers_start_in_turn_the_verifier_after_the_first_lane() -> None:
    routes = load_routes(None)
    plan = start_plan(routes, components(routes))
    names = [c.name for c in plan.in_turn]
    assert names[:3] == ["worker-draft", "verifier", "worker-final"]
    assert all(c.lane is None for c in plan.at_once)
    assert {"gateway", "router", "jobs"} <= {c.name for c in plan.at_once}
    assert len(plan.at_once) + len(plan.in_turn) == len(components(routes))
