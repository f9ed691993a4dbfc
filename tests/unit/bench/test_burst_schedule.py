"""The burst bench's scheduling facts: idle device time while work waits, and both sides
of the conservation law."""

from __future__ import annotations

import pytest

from services.apps.bench.burst_plan import JobResult
from services.apps.bench.burst_schedule import conservation, idle_while_waiting, render_s, renders


def job(intent: str, submitted: float, started: float, render_s: float, worker: str) -> JobResult:
    j = JobResult(f"job-{intent}-{submitted}", intent, submitted, worker=worker)
    j.started_at, j.inference_ms = started, render_s * 1000
    j.done = started + render_s
    return j


def test_a_free_worker_while_a_job_waits_counts_as_idle() -> None:
    # w0 renders 0-1 s; a job arrives at 0 for w1 but w1 only starts it at 0.5 s.
    jobs = [job("draft", 0.0, 0.0, 1.0, "w0"), job("final", 0.0, 0.5, 1.0, "w1")]
    assert idle_while_waiting(jobs) == pytest.approx(0.5, abs=0.02)
    # Started at once: nothing idle while waiting.
    jobs = [job("draft", 0.0, 0.0, 1.0, "w0"), job("final", 0.0, 0.0, 1.0, "w1")]
    assert idle_while_waiting(jobs) == pytest.approx(0.0, abs=0.02)


def test_conservation_sets_what_finals_must_pay_for_the_drafts_gain() -> None:
    # FIFO: drafts wait 2 s, finals 2 s; Lanes: drafts wait 0, finals 3 s.
    fifo = [job("draft", 0, 2, 0.1, "a"), job("final", 0, 2, 1.0, "a")]
    lanes = [job("draft", 0, 0, 0.1, "a"), job("final", 0, 3, 1.0, "a")]
    law = conservation(lanes, fifo, draft_work_share=0.25)
    assert law["draft_gain_s"] == pytest.approx(2.0)
    assert law["final_required_s"] == pytest.approx(2.0 / 3)  # 0.25/0.75 of the gain
    assert law["final_paid_s"] == pytest.approx(1.0)
    assert law["ratio"] == pytest.approx(1.5)


def test_a_render_paused_for_drafts_keeps_its_worker_busy_until_it_resumes_and_ends() -> None:
    # w0 starts a final (2 s of work) at 0, pauses 1 s for a draft at 0.5-1.5, ends at 3.
    final = job("final", 0.0, 0.0, 2.0, "w0")
    final.preempted_ms, final.done = 1000.0, 3.0
    draft = job("draft", 0.5, 0.5, 1.0, "w0")
    late = job("draft", 2.0, 3.0, 0.5, "w0")  # arrives while the final finishes
    assert idle_while_waiting([final, draft, late]) == pytest.approx(0.0, abs=0.02)
    assert renders([final])[0][2] == pytest.approx(3.0)


def test_render_time_per_image_counts_a_batch_once() -> None:
    solo = job("draft", 0, 0, 0.5, "a")
    pair = [job("draft", 0, 0, 0.8, "b"), job("draft", 0, 0, 0.8, "b")]
    for j in pair:
        j.batch_size = 2
    assert render_s([solo, *pair], "draft") == pytest.approx(0.4)  # median of .5, .4, .4
