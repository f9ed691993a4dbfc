"""The OpenAI-compatible images API (generations, edits, streamed partial images) on top of
the lanes: errors in OpenAI's shape, requests mapped onto ordinary Lanes jobs."""

from services.apps.gateway.openai_api.routes import router

__all__ = ["router"]
