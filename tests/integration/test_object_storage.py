"""Artifacts in S3-compatible object storage, on a real S3 server (SeaweedFS)."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from pathlib import Path

import pytest
from PIL import Image
from pydantic import SecretStr
from structlog.testing import capture_logs

from schemas.control import OpsCommand
from services.apps.ops_client import send_and_wait
from services.config.settings import Settings
from services.exceptions import ArtifactError, ArtifactUnavailable
from services.process.ports import free_port
from services.storage.artifacts import open_store
from services.storage.local_s3 import WeedProcess
from services.storage.s3 import S3ArtifactStore
from tests.support import WebhookReceiver, running_stack, wait_until, write_routes

pytestmark = [pytest.mark.kafka, pytest.mark.s3]


def _s3(settings: Settings, endpoint: str, **more: object) -> Settings:
    return settings.model_copy(
        update={
            "artifacts": f"s3://lanes/{uuid.uuid4().hex[:8]}/",
            "s3_endpoint_url": endpoint,
            "s3_access_key_id": SecretStr(WeedProcess.access_key),
            "s3_secret_access_key": SecretStr(WeedProcess.secret_key),
            "s3_max_attempts": 2,
            **more,
        }
    )


def test_the_s3_store_round_trips_an_image_and_names_what_is_missing(
    settings: Settings, s3_endpoint: str
) -> None:
    store = open_store(_s3(settings, s3_endpoint))
    assert isinstance(store, S3ArtifactStore)
    store.check()
    uri = store.put_png("job_s3", "draft-a1", Image.new("RGB", (32, 16), "red"))
    assert uri.startswith("s3://lanes/") and uri.endswith("/job_s3/draft-a1.png")
    assert store.open_image(uri).size == (32, 16)
    with pytest.raises(ArtifactError, match="does not exist"):
        store.get(uri.replace("draft-a1", "nope"))
    with pytest.raises(ArtifactError, match="not in bucket"):
        store.get("s3://elsewhere/x.png")
    with pytest.raises(ArtifactError, match="unsafe artifact name"):
        store.put("../job", "x.png", b"")
    # Retention deletes every image of the job, and only that job's.
    other = store.put("job_s3_other", "final-a1.png", b"png")
    store.put("job_s3", "final-a1.png", b"png")
    assert store.delete_job("job_s3") == 2 and store.delete_job("job_s3") == 0
    with pytest.raises(ArtifactError, match="does not exist"):
        store.get(uri)
    assert store.get(other) == b"png"


def test_an_unreachable_or_misconfigured_store_is_refused_with_the_reason(
    settings: Settings, s3_endpoint: str
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ArtifactUnavailable, match="cannot be used"):
        open_store(_s3(settings, closed)).check()
    missing = _s3(settings, s3_endpoint).model_copy(update={"artifacts": "s3://no-such-bucket/"})
    with pytest.raises(ArtifactUnavailable, match="no-such-bucket"):
        open_store(missing).check()
    with pytest.raises(ArtifactError, match="LANES_ARTIFACTS must be s3://"):
        open_store(settings.model_copy(update={"artifacts": "ftp://x"}))


async def test_a_final_job_on_separate_hosts_shares_no_disk_and_downloads_by_url(
    settings: Settings, s3_endpoint: str, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """Every component on a host of its own (its own state dir; only the broker, the S3
    store and the read-only model volume are shared): draft, refine, verification and
    repair all read and write through the store, no image lands on any host's disk, and
    the client downloads every image through the URL in its webhook."""
    fleet = tmp_path / "fleet"
    s3 = _s3(settings, s3_endpoint, state_dir=fleet, models_dir=settings.models_path)
    async with running_stack(s3, isolated_hosts=True) as stack:
        job_id = await stack.submit(
            {
                "prompt": 'a poster "SUMMER SALE"',
                "intent": "final",
                "webhook_url": receiver.url,
            }
        )
        job = await stack.wait_for_status(job_id, {"succeeded", "failed"}, timeout=150)
        assert job["status"] == "succeeded", job.get("error")
        (delivery,) = await receiver.wait_for(1)
        data = json.loads(delivery.body)["data"]
        assert data["verification"]["score"] == 1.0  # read back from the repaired image
        stages = [a["stage"] for a in data["artifacts"]]
        assert {"draft", "upscaled", "repaired"} <= set(stages)
        for artifact in data["artifacts"]:
            resp = await stack.http.get(artifact["uri"])
            assert resp.status_code == 200, artifact["uri"]
            size = Image.open(io.BytesIO(resp.content)).size
            assert size == (artifact["width"], artifact["height"])
        internal = await stack.http.get(f"/v1/generations/{job_id}")
        records = [a["uri"] for a in internal.json()["artifacts"]]
        assert all(u.startswith(stack.settings.public_base_url) for u in records)
        for lane in ("draft", "upscale"):  # workers ran on hosts of their own too
            assert (
                stack.workers[lane].settings.storage.state_dir == fleet / "hosts" / f"worker-{lane}"
            )
    assert not any(fleet.rglob("*.png"))  # no host kept an image
    # Each host holds only its own views: the gateway's jobs, the job owner's state, the
    # dispatcher's delivery records; workers and the verifier none.
    views = {p.relative_to(fleet).parts[1]: p.name for p in fleet.rglob("*.sqlite")}
    assert set(views) == {"gateway", "jobs", "webhooks"}, views


async def test_a_failed_upload_fails_the_job_with_the_reason_and_the_worker_carries_on(
    settings: Settings, tmp_path: Path
) -> None:
    """The store is gone after start-up: the worker's upload is retried (boto3), then the
    job fails with the reason; it is never marked succeeded without its image."""
    weed = WeedProcess(tmp_path / "weed")
    weed.start()
    try:
        s3 = _s3(settings, weed.endpoint, s3_max_attempts=1, store_outage_wait_s=2)
        async with running_stack(s3, worker_lanes=["draft"]) as stack:
            await stack.wait_workers_ready(names=["draft"])
            weed.stop()
            job_id = await stack.submit({"prompt": "a red chair", "intent": "draft"})
            job = await stack.wait_for_status(job_id, {"succeeded", "failed"}, timeout=90)
            assert job["status"] == "failed" and "cannot store the image" in job["error"]
            assert not job["artifacts"]
            stack.check_alive()  # the worker did not die of it
            assert stack.workers["draft"].health == "ready"
    finally:
        weed.stop()


async def test_a_store_outage_between_draft_and_refine_is_waited_out_and_each_job_ends_once(
    settings: Settings, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    """Finals whose drafts are written; a refine worker started (its store check passed, its
    lane paused by the operator, so it has read no draft) when the store goes away for
    longer than the S3 client's own retries (one attempt); the lane resumes: its draft
    reads and uploads wait the outage out, nothing exits, and when the store is back every
    job succeeds with one webhook."""
    routes = write_routes(
        tmp_path / "routes.yaml",
        draft={"sample_steps": 1, "width": 64, "height": 64},
        final={"sample_steps": 1, "width": 64, "height": 64,
               "cascade": {"lane": "upscale", "width": 256, "height": 256}},
        upscale={"sample_steps": 8, "width": 256, "height": 256, "refine_strength": 0.5,
                 "max_concurrency": 1, "max_batch": 1},
    )  # fmt: skip
    weed = WeedProcess(tmp_path / "weed")
    weed.start()
    try:
        s3 = _s3(settings, weed.endpoint, s3_max_attempts=1, store_outage_wait_s=120)
        async with running_stack(s3, routes_file=routes, worker_lanes=["final"]) as stack:
            await stack.wait_workers_ready()
            jobs = [
                await stack.submit(
                    {"prompt": f"a lamp {i}", "intent": "final", "webhook_url": receiver.url}
                )
                for i in range(3)
            ]

            async def drafts_written() -> bool:
                for job_id in jobs:
                    job = (await stack.http.get(f"/v1/generations/{job_id}")).json()
                    if not any(a["stage"] == "draft" for a in job["artifacts"]):
                        return False
                return True

            await wait_until(drafts_written, timeout=120, what="the three drafts written")
            paused = await send_and_wait(stack.settings, OpsCommand(action="pause", lane="upscale"))
            assert paused.outcome == "applied"
            with capture_logs() as logs:
                stack.start_worker("upscale")  # starts on the lane's state: paused
                await stack.wait_workers_ready(names=["upscale"])
                assert stack.workers["upscale"].cap == 0  # no draft read yet
                weed.stop()  # away before it reads any draft
                resumed = await send_and_wait(
                    stack.settings, OpsCommand(action="resume", lane="upscale")
                )
                assert resumed.outcome == "applied"

                def waits() -> set[str]:
                    return {
                        e.get("what") for e in logs if e["event"] == "store_unavailable_retrying"
                    }

                # the refine's read fails (the client's one attempt) and is waited out
                await wait_until(
                    lambda: "draft read" in waits(), timeout=60, what="a draft read waiting"
                )
                await asyncio.sleep(5)  # well past that attempt, still waiting
                stack.check_alive()  # nothing exited
                assert not receiver.deliveries  # and nothing ended while the store was away
            weed.start()  # back, on the same ports, with the drafts
            await receiver.wait_for(3, timeout=180)
            for job_id in jobs:
                job = await stack.wait_for_status(job_id, {"succeeded", "failed"}, timeout=60)
                assert job["status"] == "succeeded", job
                assert [a["stage"] for a in job["artifacts"]] == ["draft", "upscaled"]
            await asyncio.sleep(3)  # a second terminal webhook would arrive now
            ended = [json.loads(d.body)["data"]["job_id"] for d in receiver.deliveries]
            assert sorted(ended) == sorted(jobs)  # each job once
            stack.check_alive()
            assert stack.workers["upscale"].health == "ready"
    finally:
        weed.stop()
