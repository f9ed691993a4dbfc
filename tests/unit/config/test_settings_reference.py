"""Every setting has a meaning and a group, the old flat names still work, and
docs/settings.md says so as of now."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from services.apps.settings_reference import render, rows
from services.config.settings import (
    FLAT,
    PLACEHOLDER_OPS_KEY,
    PLACEHOLDER_WEBHOOK_SECRET,
    Settings,
)


def test_every_setting_is_documented() -> None:
    undocumented = [attr for _, _, attr, f in rows() if not (f.description or "").strip()]
    assert undocumented == [], f"add a docstring under these fields: {undocumented}"
    assert len({variable for _, variable, _, _ in rows()}) == len(list(rows()))


def test_the_reference_page_is_current_and_shows_no_secret() -> None:
    page = Path(__file__).parents[3] / "docs" / "settings.md"
    assert page.read_text() == render(), (
        "docs/settings.md is stale: run `lanes settings reference --out docs/settings.md`"
    )
    text = render()
    assert PLACEHOLDER_WEBHOOK_SECRET not in text and PLACEHOLDER_OPS_KEY not in text


def test_every_variable_name_deployments_use_still_works(monkeypatch: pytest.MonkeyPatch) -> None:
    """The grouped settings keep their LANES_* names, keyword names and (deprecated)
    attribute names."""
    monkeypatch.setenv("LANES_WEBHOOK_MAX_ATTEMPTS", "4")
    monkeypatch.setenv("LANES_GATEWAY_PORT", "8123")
    monkeypatch.setenv("LANES_WEBHOOK_ALLOWED_HOSTS", "a.example, b.example")
    monkeypatch.setenv("LANES_TENANT_QUOTAS", '{"acme": {"rate_per_s": 2, "burst": 5}}')
    settings = Settings(artifact_url_ttl_s=60)
    assert settings.webhooks.max_attempts == 4 and settings.gateway.port == 8123
    assert settings.webhooks.allowed_hosts == ["a.example", "b.example"]
    assert settings.admission.tenant_quotas["acme"].burst == 5
    assert settings.auth.url_ttl_s == 60
    copy = settings.model_copy(update={"gateway_port": 9000, "device": "cuda"})
    assert (copy.gateway.port, copy.worker.device, settings.gateway.port) == (9000, "cuda", 8123)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert settings.webhook_max_attempts == 4  # the old attribute, deprecated
    assert "Settings.webhooks.max_attempts" in str(caught[0].message)
    for flat, (group, field) in FLAT.items():
        assert hasattr(getattr(settings, group), field), flat
