"""Low-resolution previews of a render in progress, straight from its latents.

No VAE decode (that costs a real fraction of a step): the 4 latent channels of Stable
Diffusion-family models map to RGB by a fixed linear projection (the factors community
tools such as ComfyUI use for their "latent2rgb" previews), good enough to see composition
and colour arrive. Models whose latents are not 4 channels get no preview.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image

__all__ = ["latent_previews"]

# SD 1.x / 2.x / SDXL-like latent channel -> (R, G, B).
LATENT_RGB = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)


def latent_previews(latents: Any, size: int = 64) -> list[str | None]:
    """One ``data:image/jpeg;base64,...`` per image of the batch (None where it cannot)."""
    import torch

    if latents is None or latents.ndim != 4 or latents.shape[1] != 4:
        return [None] * (0 if latents is None else int(latents.shape[0]))
    factors = torch.tensor(LATENT_RGB, dtype=torch.float32)
    out: list[str | None] = []
    with torch.inference_mode():
        mixed = torch.einsum("bchw,cr->bhwr", latents.detach().float().cpu(), factors)
        rgb = ((mixed + 1) / 2).clamp(0, 1).mul(255).to(torch.uint8).numpy()
    for img in rgb:
        picture = Image.fromarray(img, "RGB")
        picture.thumbnail((size, size), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        picture.save(buf, format="JPEG", quality=70)
        out.append("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode())
    return out
