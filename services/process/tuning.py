"""Interpreter and scheduler settings for a worker process that renders beside an event loop."""

from __future__ import annotations

import gc
import os
import sys
import threading

import structlog

__all__ = ["freeze_startup_heap", "lower_thread_priority", "tune_worker_process"]

log = structlog.get_logger("lanes.process")


def lower_thread_priority(nice: int) -> None:
    """Make the calling thread ``nice`` steps nicer than it is.

    Linux schedules threads one by one, so a render thread at a lower priority leaves the
    CPU to the event loop (commits, heartbeats, publishes), the broker and the router
    whenever they need it, and takes every cycle they do not. Elsewhere: a no-op.
    """
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except OSError as exc:  # a container may forbid it; run at normal priority then
        log.warning("thread_priority_unchanged", error=str(exc))


def tune_worker_process(switch_interval_ms: float) -> None:
    """How often CPython hands the GIL between threads: it bounds how long a Python-heavy
    render step can keep the event loop waiting."""
    sys.setswitchinterval(switch_interval_ms / 1000)


def freeze_startup_heap() -> None:
    """Move everything alive now out of the cyclic collector's reach, so a full collection
    later scans only what the process created while serving. In a worker that is torch,
    diffusers and the model, ~500k objects: a 190 ms pause with the GIL held on this
    machine; in the router ~75k objects, 19 ms. Reference counting still frees them.

    Each call collects first (a collection scans only what is not frozen yet: the whole
    heap the first time, what was made since the last freeze after that), so no garbage
    is frozen for good. It never asks ``gc.get_freeze_count()``: that walks every frozen
    object, and a process hosting many members (the tests' in-process stacks) would pay
    for its whole frozen heap at each member's start."""
    gc.collect()
    gc.freeze()
