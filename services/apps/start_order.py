"""The order `lanes up` starts its processes in, so that a newcomer's first image comes
within seconds of "ready" on a small machine, not after every model has loaded.

Every lane worker imports torch and diffusers, loads its models (its guests' too), warms
them and profiles batch sizes: on two cores, six of them starting together take minutes
and each one's first job waits for all. So the light processes (gateway, router, jobs,
webhooks, control...) start at once, then the lane workers one at a time, each when the
one before is ready: first the lanes the intents route to, each followed by its cascade's
lane (a draft is served first, a final's refine pass next), then the rest (fallbacks,
re-renders). The verifier (an OCR model) starts after the first lane: no job needs it
before a render exists.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from services.apps.registry import Component
from services.config.routes import Routes

__all__ = ["StartPlan", "start_plan", "lane_order", "wait_ready"]

LATE = ("verifier",)  # started once the first lane serves


@dataclass(frozen=True)
class StartPlan:
    at_once: list[Component]
    in_turn: list[Component]  # each started once the one before it is ready (or gave up)


def lane_order(routes: Routes) -> list[str]:
    """Intent lanes first (in the routes file's intent order), each followed by its
    cascade's lane; then every other lane in file order."""
    order: list[str] = []

    def add(lane: str) -> None:
        if lane in routes.lanes and lane not in order:
            order.append(lane)
            cascade = routes.lanes[lane].cascade
            if cascade is not None:
                add(cascade.lane)

    for lane in routes.intents.values():
        add(lane)
    for lane in routes.lanes:
        add(lane)
    return order


def start_plan(routes: Routes, comps: Iterable[Component]) -> StartPlan:
    comps = list(comps)
    workers = {c.lane: c for c in comps if c.lane is not None}
    late = [c for c in comps if c.name in LATE]
    at_once = [c for c in comps if c.lane is None and c not in late]
    ordered = [workers[lane] for lane in lane_order(routes) if lane in workers]
    in_turn = ordered[:1] + late + ordered[1:]
    return StartPlan(at_once, in_turn)


async def wait_ready(url: str, *, timeout_s: float, stop: asyncio.Event) -> bool:
    """Poll a process's /readyz until 200 (True), or the timeout or a stop (False)."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline and not stop.is_set():
            try:
                if (await http.get(url)).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass
    return False
