"""Canary judgement: per lane and version, render and verification outcomes, and whether
the canary is worse than the stable version by more than the allowed margin."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from schemas.control import LaneDesired, ModelRef

__all__ = ["Outcomes", "CanaryJudge"]


@dataclass
class Outcomes:
    renders: int = 0
    render_failures: int = 0
    verifications: int = 0
    verification_failures: int = 0

    @property
    def failure_rate(self) -> float:
        return self.render_failures / self.renders if self.renders else 0.0

    @property
    def verification_failure_rate(self) -> float:
        return self.verification_failures / self.verifications if self.verifications else 0.0


class CanaryJudge:
    def __init__(self, min_jobs: int, margin: float) -> None:
        self.min_jobs = min_jobs
        self.margin = margin
        self.outcomes: defaultdict[tuple[str, str, str], Outcomes] = defaultdict(Outcomes)

    def render(self, lane: str, model: str, version: str, ok: bool) -> None:
        o = self.outcomes[(lane, model, version)]
        o.renders += 1
        o.render_failures += 0 if ok else 1

    def verification(self, lane: str, model: str, version: str, passed: bool) -> None:
        o = self.outcomes[(lane, model, version)]
        o.verifications += 1
        o.verification_failures += 0 if passed else 1

    def reset(self, lane: str, ref: ModelRef) -> None:
        """A canary starts from zero each time it is (re)started."""
        self.outcomes.pop((lane, ref.model, ref.version), None)

    def verdict(self, state: LaneDesired) -> str | None:
        """Why the lane's canary must be rolled back, or None while it holds up."""
        if state.canary is None:
            return None
        target, stable = state.canary.target, state.stable
        c = self.outcomes[(state.lane, target.model, target.version)]
        s = self.outcomes[(state.lane, stable.model, stable.version)]
        if c.renders >= self.min_jobs and c.failure_rate - s.failure_rate > self.margin:
            return (
                f"canary {target.label} failed {c.render_failures}/{c.renders} renders "
                f"({c.failure_rate:.0%}) vs stable {stable.label} {s.failure_rate:.0%}"
            )
        if (
            c.verifications >= self.min_jobs
            and c.verification_failure_rate - s.verification_failure_rate > self.margin
        ):
            return (
                f"canary {target.label} failed verification {c.verification_failures}/"
                f"{c.verifications} ({c.verification_failure_rate:.0%}) vs stable "
                f"{stable.label} {s.verification_failure_rate:.0%}"
            )
        return None
