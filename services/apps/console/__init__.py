"""The web console the gateway serves at ``/``: server-rendered pages (Jinja2, escaped),
htmx for live fragments, a few lines of plain JavaScript for the job page's event stream.
No Node at run time, no CDN: htmx is vendored under ``static/``. Sign-in is by API key."""

from services.apps.console.routes import console_router

__all__ = ["console_router"]
