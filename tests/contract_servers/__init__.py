"""Contract servers: real HTTP servers on loopback that speak the hosted providers' APIs
exactly (paths, headers, bodies, error shapes), for tests and for running the mixed stack
without real keys. They check every request against the provider's contract (a request the
real API would refuse gets the provider's 400), and misbehave on cue:

- in the prompt: ``[unsafe]`` (the provider's safety block), ``[unsafe-prompt]`` (Ideogram's
  422, Gemini's promptFeedback.blockReason), ``[429]`` (throttled once), ``[500]`` (a server
  error once), ``[expired]`` (Ideogram: the first output URL has already expired);
- on the whole server (``POST /_contract``): ``{"down": true}`` (every call 500),
  ``{"throttle": N, "retry_s": S}`` (the next N calls throttled), ``{"retired": [model]}``
  (404 for those models), ``{"delay_s": S}`` (each render takes S seconds).

A wrong key gets what the provider answers (Ideogram 401; Gemini 400 API_KEY_INVALID).
Images are PNGs at the provider's own sizes, showing the prompt's quoted text.

    python -m tests.contract_servers   # both, on 127.0.0.1:9301 (Ideogram) and :9302 (Google)
"""
