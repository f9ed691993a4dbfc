"""The settings every `lanes` command builds first (logging configured from them)."""

from __future__ import annotations

__all__ = ["_settings"]


def _settings():  # noqa: ANN202 - imported lazily so `lanes --help` stays fast
    from services.config.settings import Settings
    from services.process.logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    return settings
