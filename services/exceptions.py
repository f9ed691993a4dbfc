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
└── Interrupted                every job of a batch was canceled between two steps
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
