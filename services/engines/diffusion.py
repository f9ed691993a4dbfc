"""The diffusers text-to-image engine: load a checkpoint directory once, render off-loop.

The same code serves a tiny random-weight checkpoint on a CPU and a real SD/SDXL checkpoint
on a GPU: ``AutoPipelineForText2Image.from_pretrained(<dir>, local_files_only=True)``.
On CUDA: fp16 weights, PyTorch SDPA attention (diffusers' default processor on torch 2),
channels-last UNet, and an opt-in ``torch.compile`` of the UNet.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from services.engines.engine import (
    RenderContext,
    RenderOutput,
    RenderRequest,
    StepHook,
    batch_key,
    check_inputs,
)
from services.engines.memory import (
    MemoryBudget,
    OutOfMemory,
    activation_bytes,
    is_out_of_memory,
    model_footprint_bytes,
)
from services.exceptions import Interrupted

__all__ = [
    "DiffusionEngine",
    "RenderRequest",
    "RenderOutput",
    "Interrupted",
    "check_inputs",
    "batch_key",
]


class DiffusionEngine:
    """One loaded pipeline (the ``diffusers`` provider). ``render_batch`` is blocking: the
    worker runs it on the GPU thread through ``generate``.

    Cost: ``price_usd`` per image when the routes file names one, else the GPU's time at
    ``gpu_usd_per_hour`` (the batch's wall time shared by its images), else None."""

    provider = "diffusers"
    on_device = True
    batch_limit: int | None = None
    on_call: Callable[[str], None] | None = None  # no provider: never called
    state: str | None = None  # always taking work

    def throttled(self) -> bool:
        return False

    def refusing(self) -> bool:
        return False

    async def aclose(self) -> None:
        """Nothing held open (the weights go with the engine)."""

    def __init__(
        self,
        pipeline: Any,
        *,
        name: str,
        version: str,
        device: str,
        budget: MemoryBudget | None = None,
        refine: bool = False,
        price_usd: float | None = None,
        gpu_usd_per_hour: float | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.price_usd = price_usd
        self.gpu_usd_per_hour = gpu_usd_per_hour
        self.refine = refine
        self.name = name
        self.version = version
        self.device = device
        self.budget = budget or MemoryBudget(None)
        self.footprint_bytes = model_footprint_bytes(pipeline)
        self.budget.check_model(name, self.footprint_bytes)
        self._inpainter: Any = None  # made from the refine pipeline on the first mask

    @property
    def inpaints(self) -> bool:
        """A refine engine inpaints too: diffusers' inpaint pipeline shares its weights (a
        4-channel UNet blends the kept area back in at every step)."""
        return self.refine

    def decode(self, latents: Any) -> list[Image.Image]:
        """The batch's latents through the VAE, as full-size images (on the device's thread,
        inside the render: a partial image costs one VAE decode)."""
        import torch

        pipe = self.pipeline
        vae = pipe.vae
        with torch.inference_mode():
            scaled = latents.to(vae.dtype) / vae.config.scaling_factor
            shift = getattr(vae.config, "shift_factor", None)
            if shift:
                scaled = scaled + shift
            decoded = vae.decode(scaled, return_dict=False)[0]
            return list(pipe.image_processor.postprocess(decoded, output_type="pil"))

    def _pipeline_for(self, reqs: Sequence[RenderRequest]) -> Any:
        """The loaded pipeline, or its inpainting twin (same weights) for masked requests."""
        if reqs[0].mask_image is None:
            return self.pipeline
        if self._inpainter is None:
            from diffusers import AutoPipelineForInpainting

            self._inpainter = AutoPipelineForInpainting.from_pipe(self.pipeline)
            self._inpainter.set_progress_bar_config(disable=True)
        return self._inpainter

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        name: str,
        version: str,
        device: str = "cpu",
        budget: MemoryBudget | None = None,
        compile_unet: bool = False,
        refine: bool = False,
        price_usd: float | None = None,
        gpu_usd_per_hour: float | None = None,
    ) -> DiffusionEngine:
        """Load a checkpoint directory; ``refine`` loads it as an img2img (refine) pipeline."""
        import torch
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image

        if not (Path(path) / "model_index.json").is_file():
            raise FileNotFoundError(f"no diffusers checkpoint (model_index.json) in {path}")
        cuda = device.startswith("cuda")
        dtype = torch.float16 if cuda else torch.float32
        loader = AutoPipelineForImage2Image if refine else AutoPipelineForText2Image
        pipe = loader.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True)
        if hasattr(pipe, "safety_checker"):
            pipe.safety_checker = None
        pipe.set_progress_bar_config(disable=True)
        # Refuse before moving weights onto the device.
        (budget or MemoryBudget(None)).check_model(name, model_footprint_bytes(pipe))
        pipe = pipe.to(device)
        if cuda:
            pipe.unet.to(memory_format=torch.channels_last)
            if compile_unet:
                pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead", fullgraph=True)
        return cls(
            pipe,
            name=name,
            version=version,
            device=device,
            budget=budget,
            refine=refine,
            price_usd=price_usd,
            gpu_usd_per_hour=gpu_usd_per_hour,
        )

    def check_batch(self, reqs: Sequence[RenderRequest]) -> None:
        first = reqs[0]
        needed = activation_bytes(
            self.pipeline, len(reqs), first.width, first.height, first.guidance_scale
        )
        self.budget.check_batch(self.footprint_bytes, needed, len(reqs))

    def render(self, req: RenderRequest) -> RenderOutput:
        return self.render_batch([req])[0]

    async def generate(
        self, reqs: Sequence[RenderRequest], ctx: RenderContext
    ) -> list[RenderOutput]:
        """The Engine interface: the batch on the device's thread, cancel at step ends."""
        return await ctx.on_device(
            lambda between: self.render_batch(reqs, ctx.should_stop, between, ctx.on_step)
        )

    def cost_per_image(self, batch_ms: float, batch_size: int) -> float | None:
        if self.price_usd is not None:
            return self.price_usd
        if self.gpu_usd_per_hour is not None:
            return round(self.gpu_usd_per_hour * batch_ms / 3_600_000 / batch_size, 8)
        return None

    def render_batch(
        self,
        reqs: Sequence[RenderRequest],
        should_stop: Callable[[], bool] | None = None,
        between_steps: Callable[[], float] | None = None,
        on_step: StepHook | None = None,
    ) -> list[RenderOutput]:
        """Render requests that share a batch key in one pipeline call.

        Each image has its own seeded generator, so a job draws the same image whatever
        batch it lands in. Raises OutOfMemory (budget refusal or CUDA OOM). ``should_stop``
        is asked at every step boundary; when it says so the pipeline stops there and
        ``Interrupted`` is raised with the step reached. ``between_steps`` is called at every
        step boundary too (other work on this GPU: a more urgent lane's batch) and returns
        the seconds it took, which the reported inference time leaves out.
        """
        import torch

        if not reqs:
            return []
        for req in reqs:
            check_inputs(req)
            if (req.init_image is not None) != self.refine:
                kind = "refine" if self.refine else "text-to-image"
                raise ValueError(f"this is a {kind} engine; the request does not match it")
        if len({batch_key(r) for r in reqs}) != 1:
            raise ValueError("a batch must share width, height, steps and guidance_scale")
        self.check_batch(reqs)
        first = reqs[0]
        generators = [torch.Generator(device="cpu").manual_seed(r.seed) for r in reqs]
        started, began = time.perf_counter(), time.time()
        kwargs: dict[str, Any] = dict(
            num_inference_steps=first.steps,
            guidance_scale=first.guidance_scale,
            generator=generators,
        )
        if any(r.negative_prompt for r in reqs):
            kwargs["negative_prompt"] = [r.negative_prompt or "" for r in reqs]
        stopped_at: list[int] = []
        lent_s = [0.0]  # time the GPU thread spent on others' work between steps
        if should_stop is not None or between_steps is not None or on_step is not None:

            def on_step_end(
                pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]
            ) -> dict[str, Any]:
                if should_stop is not None and not stopped_at and should_stop():
                    stopped_at.append(step + 1)
                    pipe._interrupt = True  # diffusers' documented way to stop a pipeline
                if on_step is not None:  # (img2img runs fewer steps than asked: its own count)
                    total = getattr(pipe, "num_timesteps", None) or first.steps
                    on_step(step + 1, int(total), tensors.get("latents"))
                if between_steps is not None:
                    lent_s[0] += between_steps()
                return tensors

            kwargs["callback_on_step_end"] = on_step_end
        size = (first.width, first.height)
        if self.refine:
            kwargs.update(
                image=_fitted([r.init_image for r in reqs], "RGB", size, Image.Resampling.BICUBIC),
                strength=first.strength,
            )
            if first.mask_image is not None:  # white: repaint; nearest keeps it binary
                masks = [r.mask_image for r in reqs]
                kwargs.update(mask_image=_fitted(masks, "L", size, Image.Resampling.NEAREST))
                kwargs.update(width=first.width, height=first.height)
        else:
            kwargs.update(width=first.width, height=first.height)
        pipeline = self._pipeline_for(reqs)
        try:
            with torch.inference_mode():
                result = pipeline([r.prompt for r in reqs], **kwargs)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise OutOfMemory(str(exc)) from exc
            raise
        if stopped_at:
            raise Interrupted(stopped_at[0])
        elapsed = (time.perf_counter() - started - lent_s[0]) * 1000
        cost = self.cost_per_image(elapsed, len(reqs))
        return [
            RenderOutput(img, elapsed, len(reqs), lent_s[0] * 1000, began, cost_usd=cost)
            for img in result.images
        ]


def _fitted(
    images: Sequence[Image.Image | None], mode: str, size: tuple[int, int], resample: Any
) -> list[Image.Image]:
    """The batch's input images in ``mode`` at the render's size."""
    return [i.convert(mode).resize(size, resample) for i in images if i is not None]
