"""The gateway's handlers as a client meets them, on the shared running stack."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from services.config.routes import load_routes
from tests.support import Stack

pytestmark = pytest.mark.kafka


async def test_unknown_generation_is_404_with_the_id_on_every_route(stack: Stack) -> None:
    for method, path in (
        ("GET", "/v1/generations/job_nope"),
        ("GET", "/v1/generations/job_nope/image"),
        ("DELETE", "/v1/generations/job_nope"),
    ):
        resp = await stack.http.request(method, path)
        assert resp.status_code == 404 and "job_nope" in resp.json()["detail"], (method, path)


async def test_a_finished_job_cannot_be_canceled_and_a_lost_image_is_410(stack: Stack) -> None:
    job_id = await stack.submit({"prompt": "a blue cup", "intent": "draft"})
    job = await stack.wait_for_status(job_id, {"succeeded"})
    cancel = await stack.http.delete(f"/v1/generations/{job_id}")
    assert cancel.status_code == 409 and "already ended: succeeded" in cancel.json()["detail"]
    assert (await stack.http.get(f"/v1/generations/{job_id}")).json()["status"] == "succeeded"
    image = await stack.http.get(f"/v1/generations/{job_id}/image")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    delivered = job["delivered"] or job["artifacts"][-1]
    # The artifact is gone (retention, a lost disk): the client is told, not given a 500.
    Path(unquote(urlparse(delivered["uri"]).path)).unlink()
    gone = await stack.http.get(f"/v1/generations/{job_id}/image")
    assert gone.status_code == 410 and "does not exist" in gone.json()["detail"]


async def test_admin_lanes_lists_every_lane_of_the_routes_file(stack: Stack) -> None:
    lanes = (await stack.http.get("/v1/admin/lanes")).json()
    assert [item["lane"] for item in lanes] == sorted(load_routes(None).lanes)
    draft = (await stack.http.get("/v1/admin/lanes/draft")).json()
    assert draft["desired"]["stable"]["model"] == "tiny-sd"
    assert any(i["status"]["health"] == "ready" for i in draft["instances"])
    missing = await stack.http.get("/v1/admin/lanes/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]
