"""Waiting out an object store that is away: a blocking store call retried with backoff
(past boto3's own retries) while it raises ArtifactUnavailable, for at most a bound; then
the ArtifactUnavailable goes to the caller, who fails the job with the reason. A missing or
unreadable artifact (ArtifactError) is never retried."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

import structlog

from services.exceptions import ArtifactUnavailable

__all__ = ["wait_out_outage"]

T = TypeVar("T")
log = structlog.get_logger("lanes.storage")


async def wait_out_outage(
    call: Callable[[], T],
    *,
    bound_s: float,
    executor: Executor | None = None,
    what: str = "object store",
    first_delay_s: float = 0.5,
    max_delay_s: float = 8.0,
) -> T:
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + bound_s
    delay = first_delay_s
    while True:
        try:
            return await loop.run_in_executor(executor, call)
        except ArtifactUnavailable as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                log.error("store_outage_gave_up", what=what, bound_s=bound_s, error=str(exc)[:300])
                raise
            log.warning("store_unavailable_retrying", what=what, in_s=round(min(delay, left), 2))
            await asyncio.sleep(min(delay, left))
            delay = min(max_delay_s, delay * 2)
