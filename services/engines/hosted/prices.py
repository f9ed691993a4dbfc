"""List prices per image, to start the cost table with (public price pages, 2026-11).

A model's ``price_usd`` in the routes file overrides these; a model with neither records
no cost (``cost_usd: null``) and its worker logs that once at load.
"""

from __future__ import annotations

__all__ = ["LIST_PRICES_USD", "list_price"]

# (provider, model id, variant) -> USD per image; variant None: any variant.
LIST_PRICES_USD: dict[tuple[str, str, str | None], float] = {
    # Ideogram 3.0 by rendering_speed.
    ("ideogram", "V_3", "TURBO"): 0.03,
    ("ideogram", "V_3", "DEFAULT"): 0.06,
    ("ideogram", "V_3", "QUALITY"): 0.09,
    # Ideogram 2.0 (legacy /generate).
    ("ideogram", "V_2_TURBO", None): 0.05,
    ("ideogram", "V_2", None): 0.08,
    # Imagen 4 Fast (:predict); shut down from 2026-08, kept for its successor's alias.
    ("imagen", "imagen-4.0-fast-generate-001", None): 0.02,
    # Nano Banana Pro by image size.
    ("gemini", "gemini-3-pro-image", "1K"): 0.134,
    ("gemini", "gemini-3-pro-image", "2K"): 0.134,
    ("gemini", "gemini-3-pro-image", "4K"): 0.24,
}


def list_price(provider: str, model_id: str, variant: str | None) -> float | None:
    return LIST_PRICES_USD.get(
        (provider, model_id, variant), LIST_PRICES_USD.get((provider, model_id, None))
    )
