"""The web console the gateway serves at ``/``: server-rendered pages (Jinja2, escaped),
htmx for live fragments, a few lines of plain JavaScript for the job page's event stream.
No Node at run time, no CDN: htmx is vendored under ``static/``."""

from services.apps.console.routes import ConsoleDeps, install_console

__all__ = ["ConsoleDeps", "install_console"]
