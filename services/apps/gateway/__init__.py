"""HTTP gateway (FastAPI): accept generation requests, serve job status and images, to
callers authenticated by API key, each seeing only its tenant's jobs.

Status comes from the compacted ``lanes.jobs`` topic, materialized into this gateway's
own SQLite file (``services.domain.job_index``); keys from ``lanes.keys``, followed into
memory (``services.auth.key_ring``). See ``app`` for the layout.
"""

from services.apps.gateway.app import create_app

__all__ = ["create_app"]
