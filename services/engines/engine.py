"""What every engine takes and gives, local diffusers pipelines and hosted APIs alike.

An ``Engine`` renders a batch of ``RenderRequest``s and returns one ``RenderOutput`` per
request: the image, the timings, the cost and, where it applies (a local GPU), the memory.
The worker calls ``generate`` on the event loop; a local engine runs its blocking pipeline
call through ``RenderContext.on_device`` (the GPU's one thread, taking turns), a hosted
engine awaits its HTTP calls (many in flight on one loop, none blocking it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from PIL import Image

__all__ = [
    "Engine",
    "RenderContext",
    "RenderRequest",
    "RenderOutput",
    "BetweenSteps",
    "StepHook",
    "batch_key",
    "check_inputs",
]

T = TypeVar("T")
BetweenSteps = Callable[[], float]  # runs queued work at a step boundary; seconds it took
# (step done, steps in all, the batch's latents or None): called on the device's thread.
StepHook = Callable[[int, int, Any], None]


@dataclass(frozen=True)
class RenderRequest:
    prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    # Refine (img2img) engines: the image to start from, resized to width x height.
    init_image: Image.Image | None = None
    strength: float | None = None
    negative_prompt: str | None = None
    # Inpainting: white where the image may change, black where it stays (with init_image).
    mask_image: Image.Image | None = None


@dataclass(frozen=True)
class RenderOutput:
    image: Image.Image
    inference_ms: float  # wall time of the batch (local) or of the provider call (hosted)
    batch_size: int
    preempted_ms: float = 0.0  # paused between steps while a more urgent batch ran
    started_at: float = 0.0  # unix time the pipeline call (or the HTTP call) began
    cost_usd: float | None = None  # None: the model has no price in the routes file
    # Hosted engines: what the provider drew before it was fitted to the requested size.
    provider_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class RenderContext:
    """What the worker lends an engine for one batch."""

    should_stop: Callable[[], bool]  # every job of the batch was canceled
    # Run a blocking render on the device's thread; the callable gets the hook to call at
    # each step boundary (more urgent work on the same GPU), or None.
    on_device: Callable[[Callable[[BetweenSteps | None], T]], Awaitable[T]]
    # Hosted engines: while the provider refuses calls (a wrong key...), wait for its next
    # probe instead of failing at once (a lane with no fallback lane pauses instead).
    wait_if_unavailable: bool = False
    on_step: StepHook | None = None  # local engines: each denoising step's end


class Engine(Protocol):
    """What a lane worker needs of an engine, local or hosted; the worker never asks which
    kind it holds."""

    name: str  # the model's name in the routes file
    version: str
    provider: str  # diffusers | ideogram | gemini | imagen
    device: str  # cpu, cuda:N, or the provider's host
    refine: bool  # an img2img (refine) engine

    @property
    def inpaints(self) -> bool:
        """Takes a mask with the image (a refine engine that can inpaint)."""
        ...

    # Device use: renders on this process's device, so it takes turns on the GPU thread,
    # reports denoising steps, holds memory (footprint, peak) and is warmed before it
    # serves. False: a remote call, many in flight, nothing to warm (a call costs money).
    on_device: bool
    footprint_bytes: int  # weights held in this process (0 for a hosted engine)
    batch_limit: int | None  # most requests one call can take (None: the lane's max_batch)
    # Called with each provider answer's outcome (ok, throttled, ...): the worker's metrics.
    on_call: Callable[[str], None] | None

    async def generate(
        self, reqs: Sequence[RenderRequest], ctx: RenderContext
    ) -> list[RenderOutput]: ...

    def decode(self, latents: Any) -> list[Image.Image]:
        """Full-size images of a batch's latents mid-render (partial images), on the device's
        thread; [] where the engine has no latents (a hosted one)."""
        ...

    # ---- capacity: whether calls go out now (a local engine always takes work) ----------

    def throttled(self) -> bool:
        """Backing off: the provider asked us to wait; nothing is sent until then."""
        ...

    def refusing(self) -> bool:
        """The provider refuses our calls (key, funds, model) until its next probe."""
        ...

    @property
    def state(self) -> str | None:
        """Why the engine is not calling now, for heartbeats; None while it is."""
        ...

    async def aclose(self) -> None:
        """Release what the engine holds open (HTTP clients); the worker is stopping."""
        ...


def batch_key(req: RenderRequest) -> tuple[int, int, int, float, float | None, bool]:
    """Requests with the same key can share one pipeline call."""
    inpaint = req.mask_image is not None
    return (req.width, req.height, req.steps, req.guidance_scale, req.strength, inpaint)


def check_inputs(req: RenderRequest) -> None:
    """Concise ValueErrors for requests no engine can serve."""
    if not req.prompt.strip():
        raise ValueError("prompt must not be blank")
    for name, value in (("width", req.width), ("height", req.height)):
        if value % 8:
            raise ValueError(f"{name} must be divisible by 8, got {value}")
        if not 64 <= value <= 2048:
            raise ValueError(f"{name} must be between 64 and 2048, got {value}")
    if req.steps < 1:
        raise ValueError(f"steps must be at least 1, got {req.steps}")
    if req.guidance_scale < 0:
        raise ValueError(f"guidance_scale must be >= 0, got {req.guidance_scale}")
    if (req.init_image is None) != (req.strength is None):
        raise ValueError("a refine request needs both init_image and strength")
    if req.mask_image is not None and req.init_image is None:
        raise ValueError("a mask needs the image it applies to (init_image)")
