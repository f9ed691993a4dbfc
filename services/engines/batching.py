"""Warm a freshly loaded engine and find out whether micro-batching pays on this device.

A GPU renders a batch of four in little more than the time of one, so a lane's
``max_batch`` buys throughput there; a CPU (or a GPU already saturated by one image at a
large size) takes four times as long, and batching then only delays the first job of every
batch. A worker measures it once per loaded version, before the version serves, and caps
that version's batches at the smallest size whose time per image is within ``tolerance``
of the best it measured.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from PIL import Image

from services.engines.diffusion import DiffusionEngine, RenderRequest
from services.engines.engine import Engine
from services.engines.memory import OutOfMemory, free_cached_memory

__all__ = ["BatchProfile", "choose_batch_cap", "profile_batching", "warm_up"]

# Calibration renders at most this many steps: the per-step work is what a batch shares.
CALIBRATION_STEPS = 4
CPU_WARM_UP_PX = 64  # the warm-up's size on a CPU (see ``warm_up``)


@dataclass(frozen=True)
class BatchProfile:
    per_image_s: dict[int, float]  # batch size -> seconds per image
    cap: int


def choose_batch_cap(per_image_s: dict[int, float], tolerance: float = 0.1) -> int:
    """The smallest batch size whose time per image is within ``tolerance`` of the best."""
    best = min(per_image_s.values())
    return min(b for b, t in per_image_s.items() if t <= best * (1 + tolerance))


def _requests(
    engine: Engine,
    n: int,
    width: int,
    height: int,
    steps: int,
    guidance_scale: float,
    strength: float | None,
) -> list[RenderRequest]:
    init = Image.new("RGB", (width, height), (128, 128, 128)) if engine.refine else None
    return [
        RenderRequest(
            "warm up",
            width,
            height,
            steps,
            guidance_scale,
            seed,
            init_image=init,
            strength=strength if engine.refine else None,
        )
        for seed in range(n)
    ]


def on_this_device(engine: Engine) -> DiffusionEngine:
    """The engine as the local pipeline it is (warm-up, profiles, benchmarks)."""
    if not isinstance(engine, DiffusionEngine):
        raise TypeError(f"{engine.name}: only an engine on this device is warmed or profiled")
    return engine


def warm_up(
    engine: Engine,
    width: int,
    height: int,
    steps: int,
    guidance_scale: float,
    strength: float | None = None,
) -> float:
    """One render before the version serves, so that its set-up happens here and not in the
    first job; returns its seconds. On an accelerator it renders at the lane's size (kernels
    are chosen and memory pools grown per shape). On a CPU the set-up a first render pays
    (lazy imports, the scheduler, the first allocations) does not depend on its size, while
    a render at the lane's size costs seconds per version loaded: one step at 64 px does it
    (a refine pass runs ``strength`` of its steps: enough steps that it runs one)."""
    local = on_this_device(engine)
    if local.device == "cpu":
        width = height = CPU_WARM_UP_PX
        steps = math.ceil(1 / strength) if local.refine and strength else 1
    else:
        steps = min(steps, CALIBRATION_STEPS)
    started = time.perf_counter()
    local.render_batch(_requests(engine, 1, width, height, steps, guidance_scale, strength))
    return time.perf_counter() - started


def _stopped_paying(per_image: dict[int, float], tolerance: float) -> bool:
    """The largest size timed so far is not ``tolerance`` cheaper per image than the best
    smaller one (on a CPU: batch 2 already costs what two singles do)."""
    if len(per_image) < 2:
        return False
    largest = max(per_image)
    best_smaller = min(t for b, t in per_image.items() if b < largest)
    return per_image[largest] > best_smaller * (1 - tolerance)


def profile_batching(
    engine: Engine,
    max_batch: int,
    width: int,
    height: int,
    steps: int,
    guidance_scale: float,
    strength: float | None = None,
    tolerance: float = 0.1,
) -> BatchProfile:
    """Time per image at batch 1, 2, 4 ... ``max_batch`` (after a warm-up render).

    Sizes are timed smallest first, then largest first, keeping each size's better time:
    workers that start together (``make up``, a rolling deploy) share the device while
    they load, and that contention fades during the measurement rather than within one
    render. A size that does not fit the memory budget (or the GPU) is not tried again,
    nor any larger one; nor is any size past the first that is no cheaper per image than a
    smaller one (on a CPU the profile stops at 2, and a 512 px upscale worker is ready in
    half the time).
    """
    sizes = sorted(
        {1, max_batch} | {2**i for i in range(1, max_batch.bit_length()) if 2**i < max_batch}
    )
    warm_up(engine, width, height, steps, guidance_scale, strength)
    per_image: dict[int, float] = {}
    too_big = max_batch + 1  # the smallest size that did not fit
    for order in (sizes, sizes[::-1]):
        for size in (b for b in order if b < too_big):
            if order is sizes and _stopped_paying(per_image, tolerance):
                too_big = size  # batching stopped paying: a larger batch will not either
                break
            reqs = _requests(
                engine, size, width, height, min(steps, CALIBRATION_STEPS), guidance_scale, strength
            )
            started = time.perf_counter()
            try:
                on_this_device(engine).render_batch(reqs)
            except OutOfMemory:
                free_cached_memory()
                too_big = size
                per_image = {b: t for b, t in per_image.items() if b < size}
                continue
            seconds = (time.perf_counter() - started) / size
            per_image[size] = min(seconds, per_image.get(size, seconds))
    return BatchProfile(per_image, choose_batch_cap(per_image, tolerance) if per_image else 1)
