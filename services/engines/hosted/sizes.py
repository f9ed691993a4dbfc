"""A job's size in a provider's terms, and the provider's image back at the job's size.

Providers draw at their own aspect ratios and resolutions. A job asks for ``width x height``:
the adapter sends the provider's ratio closest to it (by log-ratio distance), then
*letterboxes* the answer to exactly ``width x height``: scaled to fit inside (Lanczos),
centred, the margin filled with the image's mean border colour. Nothing is cropped (the
text a typography check reads stays whole) and nothing is stretched; when the ratios match,
letterboxing is a plain resize.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from PIL import Image, ImageStat

__all__ = ["closest_ratio", "letterbox", "size_tier"]


def closest_ratio(width: int, height: int, ratios: Iterable[tuple[int, int]]) -> tuple[int, int]:
    """The (w, h) ratio nearest ``width / height`` on a log scale (ties: the first)."""
    target = math.log(width / height)
    return min(ratios, key=lambda r: abs(math.log(r[0] / r[1]) - target))


def size_tier(width: int, height: int, tiers: Iterable[tuple[str, int]]) -> str:
    """The smallest tier whose long edge covers the job's long edge (else the largest)."""
    ordered = sorted(tiers, key=lambda t: t[1])
    edge = max(width, height)
    return next((name for name, px in ordered if px >= edge), ordered[-1][0])


def letterbox(image: Image.Image, width: int, height: int) -> Image.Image:
    image = image.convert("RGB")
    if image.size == (width, height):
        return image
    scale = min(width / image.width, height / image.height)
    fitted = image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
        Image.Resampling.LANCZOS,
    )
    if fitted.size == (width, height):
        return fitted
    border = _border(image)
    canvas = Image.new("RGB", (width, height), border)
    canvas.paste(fitted, ((width - fitted.width) // 2, (height - fitted.height) // 2))
    return canvas


def _border(image: Image.Image) -> tuple[int, int, int]:
    w, h = image.size
    strips = [(0, 0, w, 1), (0, h - 1, w, h), (0, 0, 1, h), (w - 1, 0, w, h)]
    means = [ImageStat.Stat(image.crop(box)).mean for box in strips]
    return tuple(round(sum(m[c] for m in means) / len(means)) for c in range(3))  # type: ignore[return-value]
