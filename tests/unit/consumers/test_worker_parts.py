from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import TopicPartition

from consumers.lane_worker.batcher import MicroBatcher
from consumers.machinery.offsets import OffsetTracker
from services.config.routes import checkpoint_dir, load_routes
from services.engines.diffusion import DiffusionEngine
from services.engines.memory import MemoryBudget, ModelTooLarge

TP = TopicPartition("t", 0)


def test_commit_point_waits_for_the_lowest_unfinished_offset() -> None:
    t = OffsetTracker()
    for off in (10, 11, 12):
        t.add(TP, off)
    t.done(TP, 12)
    t.done(TP, 11)
    assert t.to_commit() == {TP: 10}
    t.mark_committed({TP: 10})
    assert t.to_commit() == {}
    t.done(TP, 10)
    assert t.to_commit() == {TP: 13}
    t.forget([TP])
    assert t.to_commit() == {} and t.pending() == 0


async def test_batcher_hands_out_full_batches_at_once_and_partial_after_wait() -> None:
    b: MicroBatcher[int] = MicroBatcher(max_batch=3, max_wait_s=0.2)
    for i in range(4):
        b.put("k", i)
    b.put("other", 99)
    started = time.monotonic()
    assert await b.next_batch() == [0, 1, 2]
    assert time.monotonic() - started < 0.1
    assert await b.next_batch() == [3]  # the oldest group, after its wait
    assert await b.next_batch() == [99]
    assert time.monotonic() - started >= 0.2
    waiter = asyncio.create_task(b.next_batch())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    for i in range(3):
        b.put("k", i)
    assert await asyncio.wait_for(waiter, 1) == [0, 1, 2]


def test_model_over_budget_is_refused_at_load(tmp_path_factory: pytest.TempPathFactory) -> None:
    routes = load_routes(None)
    path = checkpoint_dir("tiny-sd", routes.models["tiny-sd"], tmp_path_factory.mktemp("m"))
    with pytest.raises(
        ModelTooLarge, match=r"model 'tiny-sd' needs 0\.01 GB .* budget of 0\.00 GB"
    ):
        DiffusionEngine.load(path, name="tiny-sd", version="v", budget=MemoryBudget.from_gb(0.001))


def test_burst_plan_holds_the_draft_share_in_each_phase_and_speeds_up_tenfold() -> None:
    from services.apps.bench.burst_plan import BurstConfig, plan_arrivals

    cfg = BurstConfig(jobs=72, steady_jobs=24, draft_share=0.75, burst_factor=10.0)
    plan = plan_arrivals(cfg, steady_rate=2.0)
    steady, burst = plan[:24], plan[24:]
    assert [i for _, i in steady].count("draft") == 18
    assert [i for _, i in burst].count("draft") == 36
    assert steady[1][0] - steady[0][0] == pytest.approx(0.5)
    assert burst[1][0] - burst[0][0] == pytest.approx(0.05)
    assert plan == plan_arrivals(cfg, steady_rate=2.0)  # the same plan for both architectures


async def test_batcher_waits_for_mates_only_while_items_arrive_within_the_wait() -> None:
    b: MicroBatcher[int] = MicroBatcher(max_batch=4, max_wait_s=0.2)
    b.put("k", 0)
    started = time.monotonic()
    assert await b.next_batch() == [0]
    assert time.monotonic() - started >= 0.2  # nothing known yet: it waits
    await asyncio.sleep(0.3)
    b.put("k", 1)  # a trickle: further apart than the wait
    started = time.monotonic()
    assert await b.next_batch() == [1]
    assert time.monotonic() - started < 0.1  # handed out at once
    await asyncio.sleep(0.3)
    b.put("k", 2)  # a burst's first item goes alone ...
    assert await asyncio.wait_for(b.next_batch(), 0.1) == [2]
    b.put("k", 3)  # ... its second waits for mates
    waiter = asyncio.create_task(b.next_batch())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    b.put("k", 4)
    assert await asyncio.wait_for(waiter, 1) == [3, 4]


async def test_batcher_caps_a_key_whose_batches_do_not_pay_and_does_not_wait_for_mates() -> None:
    b: MicroBatcher[int] = MicroBatcher(
        max_batch=3, max_wait_s=5.0, limit=lambda key: 1 if key == "capped" else 99
    )
    for i in range(2):
        b.put("capped", i)
    started = time.monotonic()
    assert await b.next_batch() == [0]
    assert await b.next_batch() == [1]
    assert time.monotonic() - started < 0.5  # a group at its cap is full: no wait
    for i in range(4):
        b.put("open", i)
    assert await b.next_batch() == [0, 1, 2]  # max_batch still bounds a generous limit


def test_batch_cap_is_the_smallest_size_within_tolerance_of_the_best() -> None:
    from services.engines.batching import choose_batch_cap

    assert choose_batch_cap({1: 0.28, 2: 0.27, 4: 0.29}) == 1  # CPU: batching buys nothing
    assert choose_batch_cap({1: 1.0, 2: 0.55, 4: 0.30}) == 4  # GPU: it pays all the way
    assert choose_batch_cap({1: 1.0, 2: 0.60, 4: 0.58}) == 2  # 4 is within 10% of 2
