"""One GPU shared by a worker's own lane and the lanes it assists or backfills.

- Turns: one batch at a time, lowest priority number first (an assisted lane's overflow is
  0, the worker's own jobs 1, a backfilled lane's overflow 2); equal priorities in arrival
  order. The device is handed over on the next loop iteration, so a worker that just
  finished a batch can queue its next one at its own priority before the turn goes to
  someone else.
- Step-boundary preemption: while a render runs ``preemptible``, a more urgent batch does
  not wait for the whole render: it is queued (``render`` with ``preempt``) and run on the
  GPU thread between two of the render's denoising steps. A 20-step final costs a draft one
  step's wait, not twenty.

asyncio's locks are first-come, first-served and know nothing of the GPU thread, hence
this small class.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import TypeVar, cast

__all__ = ["BetweenSteps", "DeviceTurns"]

T = TypeVar("T")
BetweenSteps = Callable[[], float]  # runs queued work at a step boundary; seconds it took


class DeviceTurns:
    def __init__(self) -> None:
        self._busy = False
        # (priority, arrival, future): True when the turn is handed over, False when the
        # waiter may run between the steps of a preemptible render that started since.
        self._waiters: list[tuple[int, int, asyncio.Future[bool]]] = []
        self._order = itertools.count()
        self._lock = threading.Lock()  # with the GPU thread
        self._window = False  # a preemptible render is running on the GPU thread
        self._window_priority = 0  # ... at this priority
        self._between: deque[tuple[Callable[[], object], concurrent.futures.Future[object]]] = (
            deque()
        )

    # ---- turns (event loop) -------------------------------------------------------------

    async def acquire(self, priority: int) -> bool:
        """Wait for a turn. False: no turn was needed, because a lower-priority render is
        running preemptibly and this caller's work will run between its steps."""
        if not self._busy:
            self._busy = True
            return True
        if self._window and priority < self._window_priority:
            return False
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), fut))
        try:
            owned = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.result():  # the turn came as we
                self.release()  # were cancelled
            raise
        return owned

    def release(self) -> None:
        if self._waiters:
            asyncio.get_running_loop().call_soon(self._hand_over)  # stays busy until then
        else:
            self._busy = False

    def _hand_over(self) -> None:
        while self._waiters:
            *_, fut = heapq.heappop(self._waiters)
            if not fut.done():  # cancelled waiters are skipped
                fut.set_result(True)
                return
        self._busy = False

    def _window_opened(self) -> None:
        """A preemptible render started: waiters more urgent than it need no turn now."""
        while self._waiters and self._window and self._waiters[0][0] < self._window_priority:
            *_, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(False)

    @contextlib.asynccontextmanager
    async def turn(self, priority: int) -> AsyncIterator[None]:
        owned = await self.acquire(priority)
        try:
            yield
        finally:
            if owned:
                self.release()

    # ---- renders (event loop -> GPU thread) --------------------------------------------

    async def render(
        self,
        executor: Executor,
        fn: Callable[[BetweenSteps | None], T],
        *,
        priority: int,
        preempt: bool = False,
        preemptible: bool = False,
    ) -> T:
        """Run ``fn`` on the GPU thread. ``preempt``: between the steps of the render in
        progress, if one runs preemptibly at a less urgent priority. ``preemptible``: more
        urgent ``preempt`` work runs between this render's steps (``fn`` gets the hook to
        call at each step end)."""
        if preempt:
            queued = self._queue_between(lambda: fn(None), priority)
            if queued is not None:
                return cast(T, await asyncio.wrap_future(queued))
        loop = asyncio.get_running_loop()
        call: Callable[[], T] = (
            (lambda: self._preemptible(fn, loop, priority, executor))
            if preemptible
            else (lambda: fn(None))
        )
        return await loop.run_in_executor(executor, call)

    def _queue_between(
        self, fn: Callable[[], object], priority: int
    ) -> concurrent.futures.Future[object] | None:
        with self._lock:
            if not self._window or priority >= self._window_priority:
                return None
            fut: concurrent.futures.Future[object] = concurrent.futures.Future()
            self._between.append((fn, fut))
            return fut

    def _preemptible(
        self,
        fn: Callable[[BetweenSteps | None], T],
        loop: asyncio.AbstractEventLoop,
        priority: int,
        executor: Executor,
    ) -> T:
        with self._lock:
            self._window, self._window_priority = True, priority
        loop.call_soon_threadsafe(self._window_opened)
        try:
            return fn(self._run_between)
        finally:
            with self._lock:
                self._window = False
                late = bool(self._between)
            if late:  # queued after the last step boundary (during the image decode):
                self._run_next(executor)

    def _run_next(self, executor: Executor) -> None:
        """Run what was queued for a step boundary that never came next on the GPU thread,
        once the render's result is handed back: that render's outcome does not wait for it
        (a final held back by a whole draft batch), and it waits no longer than it would."""
        try:
            executor.submit(self._run_between)
        except RuntimeError:  # the executor is shutting down: run it here, now
            self._run_between()

    def _run_between(self) -> float:
        spent = 0.0
        while True:
            with self._lock:
                if not self._between:
                    return spent
                fn, fut = self._between.popleft()
            if not fut.set_running_or_notify_cancel():
                continue
            started = time.perf_counter()
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - the queuer gets it, the render goes on
                fut.set_exception(exc)
            spent += time.perf_counter() - started
