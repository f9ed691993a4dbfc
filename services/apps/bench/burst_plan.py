"""The burst benchmark's configuration, arrival plan and per-job results."""

from __future__ import annotations

import random
from dataclasses import dataclass

from services.apps.bench.stats import pct

__all__ = ["BurstConfig", "JobResult", "plan_arrivals", "overhead_breakdown", "spill_summary"]


@dataclass(frozen=True)
class BurstConfig:
    jobs: int = 72
    draft_share: float = 0.75
    burst_factor: float = 10.0
    steady_jobs: int = 24  # enough that the steady phase's p95 is not simply its maximum
    broker_warmup_jobs: int = 40  # drafts through the pipeline before the clock starts
    # produce/fetch/commit round trips before those: the JIT's warm-up. A produce->consume
    # hop here: p50 2.55 ms after 1,500, 1.83 after 10,000, 1.81 after 20,000.
    broker_warmup_round_trips: int = 10_000
    draft_steps: int = 1  # turbo-style draft
    final_steps: int = 20
    final_guidance: float = 5.0
    width: int = 256
    height: int = 256
    workers: int = 2  # both architectures: split between the lanes for Lanes, one pool for FIFO
    draft_workers: int = 1  # Lanes: how many of them serve the draft lane (the rest: final)
    draft_cap: int = 4
    draft_batch: int = 4
    final_cap: int = 2
    final_batch: int = 2
    max_wait_ms: float = 15.0
    # Lanes: over this many drafts waiting, the router may spill new drafts to the final
    # lane's workers, which serve them ahead of finals (None: no spill, the lanes stay apart).
    spill_after_lag: int | None = 4
    # ... and over this many finals waiting, new finals may spill to the draft lane's workers,
    # which render them only while no draft needs the GPU (drafts run between their steps).
    # 0: a final that would wait behind another goes to an idle draft GPU (after 2, finals
    # queued behind the final worker while the draft worker idled: 21 device-seconds per
    # run left idle with work waiting, finals paying 3.2x what priority requires).
    final_spill_after_lag: int | None = 0
    device: str = "cpu"
    preset: str = "tiny"
    seed: int = 0


@dataclass
class JobResult:
    job_id: str
    intent: str
    submitted: float  # unix seconds
    done: float | None = None
    inference_ms: float | None = None
    gpu_wait_s: float | None = None  # routed/enqueued -> its batch started
    batch_size: int = 1
    route_s: float | None = None  # submitted -> routed (Lanes: the router hop)
    store_ms: float = 0.0  # writing the PNG (both architectures write it)
    completed_at: float | None = None  # when the worker created the render event
    started_at: float | None = None  # when its batch was handed to the GPU thread
    spilled: bool = False  # Lanes: served from its lane's spill queue by another lane's guest
    preempted_ms: float = 0.0  # Lanes: its render paused while more urgent drafts ran
    worker: str = ""  # the process (Lanes: its instance) / the pool's worker (FIFO)

    @property
    def e2e_s(self) -> float | None:
        return None if self.done is None else self.done - self.submitted

    @property
    def overhead_ms(self) -> float | None:
        """End-to-end minus inference, the wait for a GPU slot and the artifact write: what
        moving the job between processes costs."""
        if self.done is None or self.inference_ms is None or self.gpu_wait_s is None:
            return None
        work = self.inference_ms + self.gpu_wait_s * 1000 + self.store_ms + self.preempted_ms
        return max(0.0, (self.e2e_s or 0) * 1000 - work)

    def segments_ms(self) -> dict[str, float] | None:
        """Where the overhead goes (Lanes): the router hop (submitted until routed), the
        in-worker handoff (batch started until the outcome event was built, less inference,
        the PNG write and any pause between its steps) and the read-back (outcome event built
        until read from Kafka)."""
        route, started, built, done = self.route_s, self.started_at, self.completed_at, self.done
        if (
            route is None
            or started is None
            or built is None
            or done is None
            or self.inference_ms is None
        ):
            return None
        return {
            "router hop": route * 1000,
            "in-worker handoff": max(
                0.0,
                (built - started) * 1000 - self.inference_ms - self.store_ms - self.preempted_ms,
            ),
            "read-back": (done - built) * 1000,
        }


def overhead_breakdown(jobs: list[JobResult], steady_jobs: int) -> list[list[object]]:
    """Median and p95 of each overhead segment, in the steady phase and in the burst."""
    ordered = sorted(jobs, key=lambda j: j.submitted)
    phases = {"steady": ordered[:steady_jobs], "burst": ordered[steady_jobs:]}
    rows: list[list[object]] = []
    for phase, sel in phases.items():
        segs = [s for j in sel if (s := j.segments_ms()) is not None]
        for name in ("router hop", "in-worker handoff", "read-back"):
            values = [s[name] for s in segs]
            rows.append([phase, name, len(values), pct(values, 50), pct(values, 95)])
        totals = [j.overhead_ms for j in sel if j.overhead_ms is not None]
        rows.append([phase, "total overhead", len(totals), pct(totals, 50), pct(totals, 95)])
    return rows


def plan_arrivals(cfg: BurstConfig, steady_rate: float) -> list[tuple[float, str]]:
    """(offset seconds, intent) per job: ``steady_jobs`` at the steady rate, then the burst.

    Each phase holds its share of drafts exactly (in a seeded random order), so runs with
    different phase lengths compare the same mix rather than whatever the draws gave.
    """
    rng = random.Random(cfg.seed)
    intents: list[str] = []
    for n in (cfg.steady_jobs, cfg.jobs - cfg.steady_jobs):
        drafts = round(n * cfg.draft_share)
        phase = ["draft"] * drafts + ["final"] * (n - drafts)
        rng.shuffle(phase)
        intents += phase
    out, t = [], 0.0
    for i, intent in enumerate(intents):
        out.append((t, intent))
        t += 1.0 / (steady_rate if i < cfg.steady_jobs else steady_rate * cfg.burst_factor)
    return out


def spill_summary(cfg: BurstConfig, jobs: list[JobResult]) -> str:
    """What spilled where, per phase (jobs in submission order)."""
    if cfg.spill_after_lag is None and cfg.final_spill_after_lag is None:
        return (
            "Spill is off (`--no-spill`): each lane's burst waits in its own queue and "
            "each lane's workers serve only their lane."
        )
    out = []
    for intent, after, helper, how in (
        ("draft", cfg.spill_after_lag, "final", "ahead of finals (finals wait in Kafka meanwhile)"),
        (
            "final",
            cfg.final_spill_after_lag,
            "draft",
            "only while no draft needs the GPU (drafts run between its steps)",
        ),
    ):
        if after is None:
            continue
        steady = [j for j in jobs[: cfg.steady_jobs] if j.intent == intent]
        burst = [j for j in jobs[cfg.steady_jobs :] if j.intent == intent]
        out.append(
            f"over {after} {intent}s waiting, new {intent}s went to the {intent} lane's "
            f"spill queue when it was the shorter wait per server, served by the {helper} "
            f"lane's worker {how}: {sum(j.spilled for j in steady)} of {len(steady)} in "
            f"the steady phase, {sum(j.spilled for j in burst)} of {len(burst)} in the burst"
        )
    return "Spill: " + "; ".join(out) + "."
