"""Service-level objectives: a lane's latency and success targets (set per lane in the
routes file, ``slo:``), and the latency histogram's buckets they must fall on (a latency
SLI is read from the bucket at the target, so the target has to be a bucket boundary)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["LATENCY_BUCKETS", "SloSpec"]

# The workers' latency histograms (queue wait, inference, end to end), in seconds.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.2, 1.5, 2, 3, 5, 10, 30, 60)


class SloSpec(BaseModel):
    """A lane's objectives over a 30-day window: ``latency_objective`` of its jobs end to
    end within ``latency_s``, and ``success_objective`` of its jobs not failed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_s: float = 1.2
    latency_objective: float = Field(0.95, gt=0, lt=1)
    success_objective: float = Field(0.99, gt=0, lt=1)

    @field_validator("latency_s")
    @classmethod
    def _on_a_bucket(cls, value: float) -> float:
        if value not in LATENCY_BUCKETS:
            raise ValueError(
                f"slo.latency_s {value} must be a latency bucket boundary: {LATENCY_BUCKETS}"
            )
        return value
