"""Memory budget of one worker: refuse a model that cannot fit, and a batch that would not.

The estimate is deliberately simple (weights + activations that scale with batch, latent
area and the widest UNet block) and errs high; a real CUDA out-of-memory error is caught
at the same boundary, so a wrong estimate degrades to a retry, never to a crash.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.exceptions import ModelTooLarge, OutOfMemory

__all__ = [
    "OutOfMemory",
    "ModelTooLarge",
    "MemoryBudget",
    "model_footprint_bytes",
    "activation_bytes",
    "is_out_of_memory",
    "free_cached_memory",
    "peak_memory_bytes",
]

GB = 1024**3
# Activation bytes per latent pixel per channel of the widest UNet block (resnets,
# attention, skip connections kept for the decoder), measured high on SD-class UNets.
ACTIVATION_FACTOR = 48


def model_footprint_bytes(pipeline: Any) -> int:
    total = 0
    for component in pipeline.components.values():
        params = getattr(component, "parameters", None)
        if callable(params):
            total += sum(p.numel() * p.element_size() for p in component.parameters())
            total += sum(b.numel() * b.element_size() for b in component.buffers())
    return total


def activation_bytes(
    pipeline: Any, batch: int, width: int, height: int, guidance_scale: float
) -> int:
    scale = getattr(pipeline, "vae_scale_factor", 8)
    latent_area = (width // scale) * (height // scale)
    unet = getattr(pipeline, "unet", None)
    widest = max(getattr(getattr(unet, "config", None), "block_out_channels", (320,)) or (320,))
    dtype_bytes = getattr(getattr(unet, "dtype", None), "itemsize", 4)
    cfg = 2 if guidance_scale > 1.0 else 1
    unet_bytes = batch * cfg * latent_area * widest * dtype_bytes * ACTIVATION_FACTOR
    vae = getattr(pipeline, "vae", None)
    vae_widest = max(getattr(getattr(vae, "config", None), "block_out_channels", (512,)) or (512,))
    vae_bytes = batch * width * height * vae_widest * dtype_bytes * 3
    return int(unet_bytes + vae_bytes)


def _nothing_reserved() -> int:
    return 0


@dataclass(frozen=True)
class MemoryBudget:
    budget_bytes: int | None  # None: no budget
    # Bytes already held by other models in the same worker (another lane's, when the
    # worker assists it), read at each check.
    reserved: Callable[[], int] = field(default=_nothing_reserved, compare=False)

    @classmethod
    def from_gb(
        cls, gb: float | None, reserved: Callable[[], int] = _nothing_reserved
    ) -> MemoryBudget:
        return cls(None if gb is None else int(gb * GB), reserved)

    def _others(self) -> str:
        held = self.reserved()
        return f" ({held / GB:.2f} GB of it held by the worker's other models)" if held else ""

    def check_model(self, name: str, footprint: int) -> None:
        if self.budget_bytes is not None and footprint + self.reserved() > self.budget_bytes:
            raise ModelTooLarge(
                f"model {name!r} needs {footprint / GB:.2f} GB for its weights, over this "
                f"worker's memory budget of {self.budget_bytes / GB:.2f} GB{self._others()}"
            )

    def check_batch(self, footprint: int, needed: int, batch: int) -> None:
        if (
            self.budget_bytes is not None
            and footprint + needed + self.reserved() > self.budget_bytes
        ):
            raise OutOfMemory(
                f"batch of {batch} needs ~{(footprint + needed) / GB:.2f} GB, over the "
                f"budget of {self.budget_bytes / GB:.2f} GB{self._others()}"
            )


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, OutOfMemory):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, getattr(torch.cuda, "OutOfMemoryError", ())):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_cached_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def peak_memory_bytes(device: str) -> int:
    """Peak GPU memory allocated on CUDA; peak resident memory of the process on CPU."""
    torch = sys.modules.get("torch")
    if device.startswith("cuda") and torch is not None and torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated(torch.device(device)))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
