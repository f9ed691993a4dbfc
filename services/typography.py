"""Typography check: OCR what an image shows and score it against the expected text."""

from __future__ import annotations

import re
import threading
from typing import Any

import numpy as np
from PIL import Image
from rapidfuzz.distance import Levenshtein

__all__ = ["normalize_text", "text_similarity", "OcrReader"]

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
        boxes = sorted(result, key=lambda r: (round(min(p[1] for p in r[0]) / 16), min(p[0] for p in r[0])))
        return " ".join(str(r[1]) for r in boxes).strip()
