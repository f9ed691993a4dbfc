"""Errors of the library the processes are built from, all under ``schemas.exceptions``.

LanesError
├── PoisonEvent
│   ├── ArtifactError          an artifact is missing or is not an image: the job fails
│   ├── ModelTooLarge          a model's weights exceed the worker's memory budget
│   ├── Rejected               an ops command invalid for the lane's state
│   ├── RefusedTarget          a webhook URL that points at a private or loopback host
│   └── RepairError            typography repair could not draw the text (font)
├── TransientError
│   └── ArtifactUnavailable    the artifact store failed for now (I/O error): retried
├── OutOfMemory                a batch does not fit the device: split, else fallback lane
├── Interrupted                every job of a batch was canceled between two steps
├── KafkaAccessRefused         the cluster refused this process: authentication or TLS
│                              (wrong password, unknown user, another CA, wrong protocol)
└── ProviderError              a hosted engine's call did not give an image
    ├── Throttled              429 / RESOURCE_EXHAUSTED / inflight_limit: pause, then retry
    ├── SafetyBlocked          the provider's safety filter: the job fails, reason "safety"
    ├── ProviderUnavailable    401 / 402 / 403 / model not found: pause, jobs to the fallback
    ├── ProviderFailed         5xx, timeouts, expired URLs after bounded retries: fallback
    └── ProviderRejected       400 / 422 for the request itself: the job fails, "invalid"
"""

from __future__ import annotations

from schemas.exceptions import LanesError, PoisonEvent, TransientError

__all__ = [
    "ArtifactError",
    "ArtifactUnavailable",
    "ModelTooLarge",
    "Rejected",
    "RefusedTarget",
    "RepairError",
    "OutOfMemory",
    "Interrupted",
    "KafkaAccessRefused",
    "ProviderError",
    "Throttled",
    "SafetyBlocked",
    "ProviderUnavailable",
    "ProviderFailed",
    "ProviderRejected",
]


class ArtifactError(PoisonEvent):
    """An artifact that cannot be read: missing, or not an image."""


class ArtifactUnavailable(TransientError):
    """The artifact store did not answer or failed an I/O for now."""


class ModelTooLarge(PoisonEvent):
    """A model whose weights exceed the worker's memory budget (refused at load)."""


class Rejected(PoisonEvent):
    """An ops command that is invalid for the lane's state; the reason goes back to the CLI."""


class RefusedTarget(PoisonEvent):
    """A webhook target that resolves to an address Lanes must not call."""


class RepairError(PoisonEvent):
    """Typography repair could not composite the text (the font cannot be loaded...)."""


class OutOfMemory(LanesError):
    """A batch that did not fit the device (CUDA OOM, or the memory budget's estimate)."""


class Interrupted(LanesError):
    """Every job of a batch was canceled: the render stopped at step ``step``."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped at step {step}")
        self.step = step


class KafkaAccessRefused(LanesError):
    """Not retried: a wrong password or certificate does not heal by waiting."""

    retriable = False


class ProviderError(LanesError):
    """A hosted engine's call that did not give an image. ``reason`` is the job's failure
    reason when it ends the job (``safety``, ``provider_unavailable``...)."""

    reason = "provider_error"

    def __init__(
        self, message: str, *, status: int | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        if reason is not None:
            self.reason = reason


class Throttled(ProviderError):
    """The provider asked us to slow down; retry no sooner than ``retry_after_s``."""

    reason = "throttled"

    def __init__(self, message: str, retry_after_s: float, *, status: int | None = 429) -> None:
        super().__init__(message, status=status)
        self.retry_after_s = retry_after_s


class SafetyBlocked(ProviderError):
    """The provider's safety filter blocked the prompt or the image."""

    reason = "safety"


class ProviderUnavailable(ProviderError):
    """The provider refuses every call for now: a wrong key, no funds, no access, or a
    model it does not serve (retired). The engine pauses; jobs go to the fallback lane."""

    reason = "provider_unavailable"


class ProviderFailed(ProviderError):
    """Server errors, timeouts or expired output URLs, still failing after the retries."""

    reason = "provider_failed"


class ProviderRejected(ProviderError):
    """The provider refused this request itself (400): retrying it cannot help."""

    reason = "invalid"
