from __future__ import annotations

import pytest
from PIL import Image, ImageDraw, ImageFont

from schemas.spec import GenerationSpec, quoted_text
from services.typography.text import OcrReader, normalize_text, text_similarity


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
    ImageDraw.Draw(image).text(
        (20, 40), "SUMMER SALE", fill="black", font=ImageFont.load_default(size=64)
    )
    read = OcrReader().read(image)
    assert text_similarity("SUMMER SALE", read) == 1.0, read
    assert OcrReader().read(Image.new("RGB", (128, 128), "white")) == ""


@pytest.mark.slow
@pytest.mark.parametrize(
    "text,size",
    [("SUMMER SALE", 256), ("50% OFF TODAY", 256), ("Free shipping on all orders", 512)],
)
def test_repair_composites_exactly_the_text_legibly(text: str, size: int) -> None:
    import numpy as np

    from services.typography.text import composite_text

    noise = Image.fromarray(
        (np.random.default_rng(0).random((size, size, 3)) * 255).astype("uint8")
    )
    assert text_similarity(text, OcrReader().read(composite_text(noise, text))) == 1.0


def test_repair_picks_contrasting_ink() -> None:
    from services.typography.text import composite_text

    for background, ink in (("white", (255, 255, 255)), ("black", (0, 0, 0))):
        out = composite_text(Image.new("RGB", (256, 256), background), "SALE")
        colours = {c for _, c in out.getcolors(256 * 256)}
        assert ink in colours  # the plate contrasts with the background


def test_repair_errors_are_clear() -> None:
    from services.typography.text import RepairError, composite_text

    with pytest.raises(RepairError, match="cannot be loaded"):
        composite_text(Image.new("RGB", (256, 256)), "SALE", font_path="/nonexistent/font.ttf")
    with pytest.raises(RepairError, match="does not fit"):
        composite_text(Image.new("RGB", (64, 64)), "SUPERCALIFRAGILISTICEXPIALIDOCIOUS" * 3)
