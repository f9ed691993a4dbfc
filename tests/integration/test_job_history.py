"""Job history at volume: the list endpoint, views that resume instead of re-reading
history, the lane worker's recent window, and retention. All on the real broker."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from consumers.lane_worker.recent_jobs import recent_jobs
from producers.kafka import make_admin, make_producer
from schemas.records import Artifact, JobState
from schemas.spec import GenerationSpec
from schemas.topics import Topics, TopicSpec
from services.config.settings import Settings
from services.domain.job_index import JobFilter, JobIndex
from services.kafka.clients import ensure_topics
from tests.support import Stack, WebhookReceiver, read_topic, running_stack, wait_until

pytestmark = pytest.mark.kafka


async def test_list_pages_newest_first_with_filters_and_cursors(stack: Stack) -> None:
    tenant = f"acme-{uuid.uuid4().hex[:8]}"
    intents = ["draft", "final", "draft", "draft", "final"]
    ids = [
        await stack.submit({"prompt": f"a red cup {i}", "intent": intent, "tenant": tenant})
        for i, intent in enumerate(intents)
    ]
    for job_id in ids:
        await stack.wait_for_status(job_id, {"succeeded"})

    pages: list[list[str]] = []
    params: dict[str, str | int] = {"tenant": tenant, "limit": 2}
    while True:
        resp = await stack.http.get("/v1/generations", params=params)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        pages.append([item["job_id"] for item in body["items"]])
        if body["next_cursor"] is None:
            assert "next" not in body["links"]
            break
        # The next page's link is one the client can fetch, at the gateway's public URL.
        assert body["links"]["next"].startswith(f"{stack.settings.public_base_url}/v1/")
        params = {**params, "cursor": body["next_cursor"]}
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [j for page in pages for j in page] == list(reversed(ids))

    drafts = (
        await stack.http.get("/v1/generations", params={"tenant": tenant, "intent": "draft"})
    ).json()["items"]
    assert [d["job_id"] for d in drafts] == [ids[3], ids[2], ids[0]]
    assert all(d["intent"] == "draft" and d["status"] == "succeeded" for d in drafts)
    failed = await stack.http.get("/v1/generations", params={"tenant": tenant, "status": "failed"})
    assert failed.json()["items"] == []

    for bad, reason in (
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"status": "exploded"}, "status"),
        ({"limit": 0}, "limit"),
        ({"intent": "sketch"}, "intent"),
    ):
        resp = await stack.http.get("/v1/generations", params=bad)
        assert resp.status_code == 422 and reason in resp.text, (bad, resp.text)


def _job(job_id: str, status: str = "succeeded", **extra: object) -> JobState:
    return JobState(
        job_id=job_id,
        status=status,  # type: ignore[arg-type]
        spec=GenerationSpec(prompt="a cup", tenant="bench"),
        **extra,  # type: ignore[arg-type]
    )


async def _produce(
    settings: Settings, topic: str, records: list[tuple[str, bytes | None, int | None]]
) -> None:
    producer = make_producer(settings)
    await producer.start()
    try:
        for key, value, ts in records:
            await producer.send(topic, key=key.encode(), value=value, timestamp_ms=ts)
        await producer.flush()
    finally:
        await producer.stop()


async def _jobs_topic(settings: Settings, *, partitions: int, finished: int, name: str) -> str:
    """The test's lanes.jobs, holding ``finished`` succeeded jobs ``{name}_0``, ``{name}_1``..."""
    topic = Topics(settings.topic_prefix).jobs
    await ensure_topics(settings, [TopicSpec(topic, partitions=partitions, compacted=True)])
    jobs = [
        (f"{name}_{i}", _job(f"{name}_{i}").model_dump_json().encode(), None)
        for i in range(finished)
    ]
    await _produce(settings, topic, jobs)
    return topic


async def _caught_up(index: JobIndex) -> asyncio.Task[None]:
    task = asyncio.create_task(index.view.follow())
    await asyncio.wait_for(index.view.caught_up.wait(), 60)
    return task


async def _stop(index: JobIndex, task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    index.view.close()


async def test_a_restarted_view_reads_only_what_it_missed(
    settings: Settings, tmp_path: Path
) -> None:
    topic = await _jobs_topic(settings, partitions=3, finished=300, name="job")
    path = tmp_path / "gateway-jobs.sqlite"
    first = JobIndex(settings, topic, path)
    task = await _caught_up(first)
    assert first.view.count() == 300 and first.view.applied == 300
    await _stop(first, task)

    # While it is down: 10 new jobs, one job changes, one is deleted by retention.
    news = [
        (f"new_{i}", _job(f"new_{i}", "queued").model_dump_json().encode(), None) for i in range(10)
    ]
    changed = _job("job_1", "failed", error="out of memory").model_dump_json().encode()
    await _produce(settings, topic, [*news, ("job_1", changed, None), ("job_2", None, None)])

    again = JobIndex(settings, topic, path)
    task = await _caught_up(again)
    try:
        assert again.view.applied == 12  # what it missed, not the 300 before
        assert again.view.count() == 309
        assert again.get("job_2") is None
        failed = again.get("job_1")
        assert failed is not None and failed.error == "out of memory"
        page, _ = again.page(JobFilter(status="queued"), limit=50)
        assert sorted(j.job_id for j in page) == sorted(k for k, _, _ in news)
    finally:
        await _stop(again, task)


async def test_a_view_of_a_recreated_topic_drops_the_old_rows(
    settings: Settings, tmp_path: Path
) -> None:
    """Offsets past a partition's end mean the topic is not the one the file was made from."""
    topic = await _jobs_topic(settings, partitions=1, finished=20, name="old")
    path = tmp_path / "view.sqlite"
    index = JobIndex(settings, topic, path)
    await _stop(index, await _caught_up(index))

    admin = make_admin(settings)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()
    await asyncio.sleep(2)
    await ensure_topics(settings, [TopicSpec(topic, partitions=1, compacted=True)])
    await _produce(settings, topic, [("fresh", _job("fresh").model_dump_json().encode(), None)])

    index = JobIndex(settings, topic, path)
    task = await _caught_up(index)
    try:
        assert index.get("old_0") is None and index.get("fresh") is not None
        assert index.view.count() == 1
    finally:
        await _stop(index, task)


async def test_lane_workers_remember_only_recent_jobs(settings: Settings) -> None:
    """The worker's dedupe/cancel view starts at now - window: history is not read."""
    topic = Topics(settings.topic_prefix).jobs
    await ensure_topics(settings, [TopicSpec(topic, partitions=3, compacted=True)])
    now_ms = int(time.time() * 1000)
    week_ago = now_ms - 7 * 24 * 3600 * 1000
    art = Artifact(stage="draft", uri="s3://b/x.png", width=8, height=8, model="m", version="v")
    records: list[tuple[str, bytes | None, int | None]] = [
        (f"old_{i}", _job(f"old_{i}").model_dump_json().encode(), week_ago) for i in range(200)
    ]
    records += [
        ("done", _job("done").model_dump_json().encode(), now_ms),
        (
            "canceling",
            _job("canceling", "running", cancel_requested=True).model_dump_json().encode(),
            now_ms,
        ),
        (
            "drafted",
            _job("drafted", "draft_ready", artifacts=[art]).model_dump_json().encode(),
            now_ms,
        ),
        ("waiting", _job("waiting", "routed").model_dump_json().encode(), now_ms),
    ]
    await _produce(settings, topic, records)
    view = recent_jobs(settings.model_copy(update={"worker_recent_jobs_s": 3600.0}))
    task = asyncio.create_task(view.follow())
    try:
        await asyncio.wait_for(view.caught_up.wait(), 30)
        assert view.get("old_0") is None  # a week old: never read
        done, canceling, drafted = view.get("done"), view.get("canceling"), view.get("drafted")
        assert done is not None and done.terminal
        assert canceling is not None and canceling.canceling and not canceling.terminal
        assert drafted is not None and (1, "draft") in drafted.rendered
        assert view.get("waiting") is None  # nothing in it can skip a render: not kept
        assert len(view) == 3
        # A job canceled later is seen while the view follows.
        await _produce(
            settings,
            topic,
            [("waiting", _job("waiting", "canceled").model_dump_json().encode(), None)],
        )
        await wait_until(
            lambda: view.get("waiting") is not None, timeout=15, what="the cancel seen"
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_retention_deletes_a_finished_job_its_images_and_its_deliveries(
    settings: Settings, receiver: WebhookReceiver
) -> None:
    async with running_stack(
        settings, worker_lanes=["draft"], retention_days=3 / 86400, retention_sweep_s=0.5
    ) as stack:
        job_id = await stack.submit(
            {"prompt": "a green cup", "intent": "draft", "webhook_url": receiver.url}
        )
        job = await stack.wait_for_status(job_id, {"succeeded"})
        assert job["artifacts"]
        image = await stack.http.get(f"/v1/generations/{job_id}/image")
        assert image.status_code == 200
        await receiver.wait_for(1)
        folder = stack.settings.artifacts_path / job_id
        assert any(folder.iterdir())

        async def gone() -> bool:
            resp = await stack.http.get(f"/v1/generations/{job_id}")
            return resp.status_code == 404

        await wait_until(gone, timeout=30, what="the job expired")
        assert not folder.exists()  # its images were deleted with it
        assert (await stack.http.get(f"/v1/generations/{job_id}/image")).status_code == 404
        listed = (await stack.http.get("/v1/generations", params={"limit": 100})).json()
        assert job_id not in [item["job_id"] for item in listed["items"]]
        topics = Topics(stack.settings.topic_prefix)

        async def delivery_tombstoned() -> bool:
            records = await read_topic(stack.settings, topics.webhook_deliveries)
            mine = [r for r in records if r.key == f"{job_id}:succeeded".encode()]
            return bool(mine) and mine[-1].value is None

        await wait_until(delivery_tombstoned, timeout=30, what="its delivery record deleted")
        jobs = await read_topic(stack.settings, topics.jobs)
        assert [r.value for r in jobs if r.key == job_id.encode()][-1] is None
        # Nothing went to the dead-letter queue: tombstones are not malformed events.
        assert await read_topic(stack.settings, topics.dlq) == []
        assert len(receiver.deliveries) == 1  # and no second webhook


def test_the_state_benchmark_writes_its_table_and_plot(settings: Settings, tmp_path: Path) -> None:
    """`lanes bench state` at a small size: every GET of a stored job answered (it raises
    otherwise), a restarted gateway measured, the table and the plot written."""
    from services.apps.bench.state import StateConfig, run_state

    cfg = StateConfig(sizes=[0, 2000], gets=40, worker_lane=None)
    table = run_state(cfg, tmp_path / "results", settings=settings)
    text = table.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| 2000 ")]
    assert len(rows) == 1 and "restarted gateway ready at 2,000 jobs" in text
    assert (tmp_path / "results" / "state.png").stat().st_size > 10_000
