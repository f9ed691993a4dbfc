"""The gateway's background tasks stop with it, even one that loses a cancellation (Python
3.11's ``wait_for`` drops one that meets its inner result): a task left running would keep
the gateway's event loop from ever closing."""

from __future__ import annotations

import asyncio

from services.apps.gateway.views import Followers


async def test_a_follower_that_swallows_a_cancel_is_cancelled_again_and_stops() -> None:
    swallowed = []

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed.append(1)  # as a lost cancellation looks: the loop goes on

    followers = Followers()
    followers.start(stubborn=stubborn)
    await asyncio.sleep(0.1)
    task = followers.tasks[0]
    await asyncio.wait_for(followers.stop(timeout_s=5), 4)
    assert task.cancelled() and swallowed == [1] and followers.tasks == []
