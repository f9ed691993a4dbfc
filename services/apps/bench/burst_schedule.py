"""How the burst's scheduling spent the devices: each worker's renders over time (the
timeline plot), the device time left idle while jobs waited, and the conservation law's
check of what serving drafts first may cost finals.

Conservation (Kleinrock): for any work-conserving scheduler over the same arrivals, the
work-weighted sum of mean waits is the same, ``ρ_d·W_d + ρ_f·W_f = const``. So when drafts
gain ``G = W_d(FIFO) − W_d(Lanes)`` in mean wait, finals must lose at least
``(ρ_d/ρ_f)·G``: that is the price of priority. What finals lose beyond it is device time
left idle or spent twice (a batch timer, a guest holding a slot, a fetch pause...).
"""

from __future__ import annotations

from pathlib import Path
from statistics import mean, median
from typing import Any

from services.apps.bench.burst_plan import JobResult

__all__ = ["conservation", "idle_while_waiting", "plot_timeline", "renders"]


def renders(jobs: list[JobResult]) -> list[tuple[str, float, float, str]]:
    """(worker, start, end, intent) of each job's render, unix seconds. A render paused
    between its steps while more urgent drafts ran ends that much later (the drafts are
    spans of their own, drawn over the pause): counting it as ending at start + inference
    showed its worker idle while it was finishing."""
    out = []
    for j in jobs:
        if j.started_at is None or j.inference_ms is None or not j.worker:
            continue
        end = j.started_at + (j.inference_ms + j.preempted_ms) / 1000
        out.append((j.worker, j.started_at, end, j.intent))
    return out


def render_s(jobs: list[JobResult], intent: str) -> float:
    """Median render time of one image of ``intent`` (a batch's time over its size)."""
    times = [
        j.inference_ms / 1000 / max(1, j.batch_size)
        for j in jobs
        if j.intent == intent and j.inference_ms is not None
    ]
    return median(times) if times else float("nan")


def _wait_s(j: JobResult) -> float | None:
    """Everything but its own render: end-to-end less the render's wall time."""
    if j.e2e_s is None or j.inference_ms is None:
        return None
    return max(0.0, j.e2e_s - j.inference_ms / 1000)


def mean_wait(jobs: list[JobResult], intent: str) -> float:
    waits = [w for j in jobs if j.intent == intent and (w := _wait_s(j)) is not None]
    return mean(waits) if waits else float("nan")


def conservation(
    lanes: list[JobResult], fifo: list[JobResult], draft_work_share: float
) -> dict[str, float]:
    """Both sides of the law: what finals must pay for the drafts' gain, and what they
    paid (mean waits, seconds)."""
    gain = mean_wait(fifo, "draft") - mean_wait(lanes, "draft")
    required = draft_work_share / (1 - draft_work_share) * max(0.0, gain)
    paid = mean_wait(lanes, "final") - mean_wait(fifo, "final")
    return {
        "draft_gain_s": gain,
        "final_required_s": required,
        "final_paid_s": paid,
        # paid over required; <= 1 when finals pay no more than priority must cost
        "ratio": paid / required if required > 0 else float("nan"),
    }


def idle_while_waiting(jobs: list[JobResult], step_s: float = 0.01) -> float:
    """Device-seconds left idle while a submitted job had not started rendering, over the
    run (workers that never rendered are not counted: their lane had no job)."""
    spans = renders(jobs)
    if not spans:
        return 0.0
    workers = sorted({w for w, *_ in spans})
    by_worker = {w: sorted((s, e) for x, s, e, _ in spans if x == w) for w in workers}
    starts = sorted(j.started_at for j in jobs if j.started_at is not None)
    submits = sorted(j.submitted for j in jobs)
    t, end = submits[0], max(e for _, _, e, _ in spans)
    idle = 0.0
    while t < end:
        waiting = sum(1 for s in submits if s <= t) - sum(1 for s in starts if s <= t)
        if waiting > 0:
            free = sum(1 for w in workers if not any(s <= t < e for s, e in by_worker[w]))
            idle += min(free, waiting) * step_s
        t += step_s
    return idle


def plot_timeline(runs: dict[str, list[JobResult]], path: Path, title: str) -> None:
    """One panel per architecture: each worker's renders as bars (drafts and finals in
    two colours), and the number of jobs waiting to start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"draft": "tab:blue", "final": "tab:orange"}
    fig, axes = plt.subplots(len(runs), 1, figsize=(12, 2.2 * len(runs) + 0.6), sharex=True)
    axes = list(axes) if len(runs) > 1 else [axes]
    for ax, (arch, jobs) in zip(axes, runs.items(), strict=True):
        t0 = min(j.submitted for j in jobs)  # each arm from its own first arrival
        spans = renders(jobs)
        workers = sorted({w for w, *_ in spans})
        for row, worker in enumerate(workers):
            for w, s, e, intent in spans:
                if w == worker:
                    ax.broken_barh([(s - t0, e - s)], (row - 0.4, 0.8), color=colours[intent])
        ax.set_yticks(range(len(workers)), workers)
        waiting = ax.twinx()
        times = sorted({j.submitted - t0 for j in jobs} | {s - t0 for _, s, _, _ in spans})
        counts = [
            sum(1 for j in jobs if j.submitted - t0 <= t)
            - sum(1 for j in jobs if j.started_at is not None and j.started_at - t0 <= t)
            for t in times
        ]
        waiting.step(times, counts, where="post", color="grey", lw=0.8)
        waiting.set_ylabel("jobs waiting", color="grey")
        ax.set_title(f"{arch}: renders per worker (blue draft, orange final)", fontsize=9)
    axes[-1].set_xlabel("seconds since the first arrival")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def spread(values: list[float]) -> str:
    """median (min–max) of a metric over the runs."""
    ok = sorted(v for v in values if v == v)
    if not ok:
        return "n/a"
    mid = ok[len(ok) // 2] if len(ok) % 2 else (ok[len(ok) // 2 - 1] + ok[len(ok) // 2]) / 2
    return f"{mid:.2f} ({ok[0]:.2f}–{ok[-1]:.2f})"


def run_facts(
    lanes_data: dict[str, Any], fifo_data: dict[str, Any], draft_work_share: float
) -> dict[str, float]:
    """The scheduling targets' numbers for one run (Lanes over FIFO)."""
    from services.apps.bench.stats import pct

    lanes = [JobResult(**j) for j in lanes_data["jobs"]]
    fifo = [JobResult(**j) for j in fifo_data["jobs"]]

    def lat(jobs: list[JobResult], intent: str, q: float) -> float:
        return pct([j.e2e_s for j in jobs if j.intent == intent and j.e2e_s is not None], q)

    def throughput(jobs: list[JobResult]) -> float:
        ends = [j.done for j in jobs if j.done is not None]
        return len(ends) / (max(ends) - min(j.submitted for j in jobs)) if ends else 0.0

    law = conservation(lanes, fifo, draft_work_share)
    return {
        "draft_p95_x": lat(lanes, "draft", 95) / lat(fifo, "draft", 95),
        "final_p95_x": lat(lanes, "final", 95) / lat(fifo, "final", 95),
        "final_p50_x": lat(lanes, "final", 50) / lat(fifo, "final", 50),
        "throughput_x": throughput(lanes) / throughput(fifo),
        "law_ratio": law["ratio"],
        "draft_gain_s": law["draft_gain_s"],
        "final_required_s": law["final_required_s"],
        "final_paid_s": law["final_paid_s"],
        # The same render on the same cores, slower when the broker, router and gateway
        # share them (the FIFO has none of these): a CPU host's cost, not a GPU's.
        "draft_render_x": render_s(lanes, "draft") / render_s(fifo, "draft"),
        "final_render_x": render_s(lanes, "final") / render_s(fifo, "final"),
        "idle_waiting_lanes_s": idle_while_waiting(lanes),
        "idle_waiting_fifo_s": idle_while_waiting(fifo),
    }
