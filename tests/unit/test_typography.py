from __future__ import annotations

import pytest
from PIL import Image, ImageDraw, ImageFont

from schemas.spec import GenerationSpec, quoted_text
from services.typography import OcrReader, normalize_text, text_similarity


def test_quoted_text_is_the_default_expected_text() -> None:
    assert quoted_text('a poster with the text "SUMMER SALE"') == "SUMMER SALE"
    assert quoted_text("curly \u201cBig Deal\u201d quotes") == "Big Deal"
    assert quoted_text("no quotes here") is None
    assert GenerationSpec(prompt='say "HI"', text="HELLO").expected_text == "HELLO"


def test_similarity_ignores_case_punctuation_and_spacing() -> None:
    assert normalize_text(" Summer   sale! ") == "SUMMER SALE"
    assert text_similarity("SUMMER SALE", "summer sale") == 1.0
    assert text_similarity("SUMMER SALE", "SUMMER SAIE") == pytest.approx(1 - 1 / 11)
    assert text_similarity("SUMMER SALE", "") == 0.0


@pytest.mark.slow
def test_ocr_reads_rendered_text_offline() -> None:
    image = Image.new("RGB", (512, 160), "white")
    ImageDraw.Draw(image).text((20, 40), "SUMMER SALE", fill="black", font=ImageFont.load_default(size=64))
    read = OcrReader().read(image)
    assert text_similarity("SUMMER SALE", read) == 1.0, read
    assert OcrReader().read(Image.new("RGB", (128, 128), "white")) == ""
