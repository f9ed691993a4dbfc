"""The diffusers text-to-image engine: load a checkpoint directory once, render off-loop.

The same code serves a tiny random-weight checkpoint on a CPU and a real SD/SDXL checkpoint
on a GPU: ``AutoPipelineForText2Image.from_pretrained(<dir>, local_files_only=True)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

__all__ = ["DiffusionEngine", "RenderRequest", "RenderOutput", "check_inputs"]


@dataclass(frozen=True)
class RenderRequest:
    prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int


@dataclass(frozen=True)
class RenderOutput:
    image: Image.Image
    inference_ms: float


def check_inputs(req: RenderRequest) -> None:
    """Concise ValueErrors for requests no pipeline can serve."""
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


class DiffusionEngine:
    """One loaded pipeline. ``render`` is blocking: call it from a worker thread."""

    def __init__(self, pipeline: Any, *, name: str, version: str, device: str) -> None:
        self.pipeline = pipeline
        self.name = name
        self.version = version
        self.device = device

    @classmethod
    def load(cls, path: Path, *, name: str, version: str, device: str = "cpu") -> DiffusionEngine:
        import torch
        from diffusers import AutoPipelineForText2Image

        if not (Path(path) / "model_index.json").is_file():
            raise FileNotFoundError(f"no diffusers checkpoint (model_index.json) in {path}")
        cuda = device.startswith("cuda")
        dtype = torch.float16 if cuda else torch.float32
        pipe = AutoPipelineForText2Image.from_pretrained(
            str(path), torch_dtype=dtype, local_files_only=True
        )
        if hasattr(pipe, "safety_checker"):
            pipe.safety_checker = None
        pipe.set_progress_bar_config(disable=True)
        pipe = pipe.to(device)
        if cuda:
            pipe.unet.to(memory_format=torch.channels_last)
        return cls(pipe, name=name, version=version, device=device)

    def render(self, req: RenderRequest) -> RenderOutput:
        import torch

        check_inputs(req)
        generator = torch.Generator(device="cpu").manual_seed(req.seed)
        started = time.perf_counter()
        with torch.inference_mode():
            result = self.pipeline(
                req.prompt,
                width=req.width,
                height=req.height,
                num_inference_steps=req.steps,
                guidance_scale=req.guidance_scale,
                generator=generator,
            )
        return RenderOutput(result.images[0], (time.perf_counter() - started) * 1000)
