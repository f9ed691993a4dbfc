"""Every setting has a meaning and a concern, and docs/settings.md says so as of now."""

from __future__ import annotations

from pathlib import Path

from services.apps.settings_reference import group_of, render
from services.config.settings import PLACEHOLDER_OPS_KEY, PLACEHOLDER_WEBHOOK_SECRET, Settings


def test_every_setting_is_documented_and_grouped() -> None:
    undocumented = [
        n for n, f in Settings.model_fields.items() if not (f.description or "").strip()
    ]
    assert undocumented == [], f"add a docstring under these fields: {undocumented}"
    ungrouped = [n for n in Settings.model_fields if group_of(n) is None]
    assert ungrouped == [], f"name a concern for these in settings_reference.GROUPS: {ungrouped}"


def test_the_reference_page_is_current_and_shows_no_secret() -> None:
    page = Path(__file__).parents[3] / "docs" / "settings.md"
    assert page.read_text() == render(), (
        "docs/settings.md is stale: run `lanes settings reference --out docs/settings.md`"
    )
    text = render()
    for name in Settings.model_fields:
        assert f"`LANES_{name.upper()}`" in text
    assert PLACEHOLDER_WEBHOOK_SECRET not in text and PLACEHOLDER_OPS_KEY not in text
