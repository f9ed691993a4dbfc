"""Typography check: OCR what an image shows and score it against the expected text."""

from __future__ import annotations

import re
import threading
from typing import Any

import numpy as np
from PIL import Image
from rapidfuzz.distance import Levenshtein

from services.exceptions import RepairError

__all__ = [
    "normalize_text",
    "text_similarity",
    "OcrReader",
    "RepairError",
    "load_font",
    "composite_text",
]

_NON_WORD = re.compile(r"[^0-9A-Z]+")


def normalize_text(text: str) -> str:
    """Case, punctuation and spacing do not count: 'Summer  sale!' == 'SUMMER SALE'."""
    return " ".join(_NON_WORD.sub(" ", text.upper()).split())


def text_similarity(expected: str, read: str) -> float:
    """Normalized edit similarity in [0, 1] (1 - Levenshtein distance / longer length)."""
    a, b = normalize_text(expected), normalize_text(read)
    if not a and not b:
        return 1.0
    return float(Levenshtein.normalized_similarity(a, b))


class OcrReader:
    """RapidOCR (ONNX models shipped in the wheel: works offline), loaded once per process."""

    def __init__(self) -> None:
        self._engine: Any = None
        self._lock = threading.Lock()

    def load(self) -> Any:
        with self._lock:
            if self._engine is None:
                from rapidocr_onnxruntime import RapidOCR

                self._engine = RapidOCR()
            return self._engine

    def read(self, image: Image.Image) -> str:
        """All text found, in reading order (top to bottom, then left to right)."""
        engine = self.load()
        result, _ = engine(np.asarray(image.convert("RGB")))
        if not result:
            return ""
        boxes = sorted(
            result, key=lambda r: (round(min(p[1] for p in r[0]) / 16), min(p[0] for p in r[0]))
        )
        return " ".join(str(r[1]) for r in boxes).strip()


def load_font(size: int, font_path: str | None = None) -> Any:
    """The given TrueType font, or Pillow's bundled scalable default."""
    from PIL import ImageFont

    if font_path is None:
        return ImageFont.load_default(size=size)
    try:
        return ImageFont.truetype(font_path, size=size)
    except OSError as exc:
        raise RepairError(f"font {font_path!r} cannot be loaded: {exc}") from exc


def _lines(words: list[str], n: int) -> list[list[str]]:
    """Split words into n lines of similar length, in order."""
    total = sum(len(w) for w in words) + len(words) - 1
    lines: list[list[str]] = [[]]
    for word in words:
        used = sum(len(x) + 1 for line in lines for x in line)
        if lines[-1] and len(lines) < n and used + len(word) / 2 > total * len(lines) / n:
            lines.append([])
        lines[-1].append(word)
    return lines


def composite_text(
    image: Image.Image, text: str, font_path: str | None = None, *, safe_margin: float = 0.08
) -> Image.Image:
    """Draw ``text`` exactly, centred in the image's safe area, on a contrasting plate.

    Picks the line breaking (1 to 3 lines) and the font size that set the text largest
    inside the safe area (``safe_margin`` on each side, at most 60% of the height). Words
    are spaced half an em apart so OCR keeps them apart. Text colour is black or white,
    whichever contrasts more with the area behind it; the plate is the other one.
    """
    from PIL import ImageDraw, ImageStat

    words = text.split()
    if not words:
        raise RepairError("no text to composite")
    out = image.convert("RGB").copy()
    w, h = out.size
    max_w, max_h = w * (1 - 2 * safe_margin), h * 0.6
    draw = ImageDraw.Draw(out)
    best: tuple[int, Any, list[list[str]]] | None = None
    for n in range(1, min(3, len(words)) + 1):
        lines = _lines(words, n)
        size = int(max_h / n)
        while size >= 10:
            font = load_font(size, font_path)
            widths = [
                sum(draw.textlength(x, font=font) for x in line) + size * 0.5 * (len(line) - 1)
                for line in lines
            ]
            if max(widths) <= max_w and size * 1.25 * n <= max_h:
                break
            size = int(size * 0.92)
        if size >= 10 and (best is None or size > best[0]):
            best = (size, font, lines)
    if best is None:
        raise RepairError(f"{text!r} does not fit a {w}x{h} image at a legible size")
    size, font, lines = best
    line_h = size * 1.25
    widths = [
        sum(draw.textlength(x, font=font) for x in line) + size * 0.5 * (len(line) - 1)
        for line in lines
    ]
    y0 = (h - line_h * len(lines)) / 2
    pad = max(4, size // 4)
    plate = (
        int((w - max(widths)) / 2 - pad),
        int(y0 - pad),
        int((w + max(widths)) / 2 + pad),
        int(y0 + line_h * len(lines) + pad),
    )
    behind = ImageStat.Stat(out.convert("L").crop(plate)).mean[0]
    ink, paper = ((0, 0, 0), (255, 255, 255)) if behind >= 128 else ((255, 255, 255), (0, 0, 0))
    draw.rectangle(plate, fill=paper)
    for i, (line, width) in enumerate(zip(lines, widths, strict=True)):
        x, y = (w - width) / 2, y0 + i * line_h
        for word in line:
            draw.text((x, y), word, font=font, fill=ink)
            x += draw.textlength(word, font=font) + size * 0.5
    return out
