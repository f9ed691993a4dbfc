"""The gateway's handlers as a client meets them, on the shared running stack."""

from __future__ import annotations

import json
from urllib.parse import unquote, urlparse

import pytest

from services.config.routes import load_routes
from tests.support import Stack, WebhookReceiver

pytestmark = pytest.mark.kafka


async def test_unknown_generation_is_404_with_the_id_on_every_route(stack: Stack) -> None:
    for method, path in (
        ("GET", "/v1/generations/job_nope"),
        ("GET", "/v1/generations/job_nope/image"),
        ("POST", "/v1/generations/job_nope/cancel"),
    ):
        resp = await stack.http.request(method, path)
        assert resp.status_code == 404 and "job_nope" in resp.json()["detail"], (method, path)


async def test_a_finished_job_cannot_be_canceled_and_a_lost_image_is_410(stack: Stack) -> None:
    job_id = await stack.submit({"prompt": "a blue cup", "intent": "draft"})
    job = await stack.wait_for_status(job_id, {"succeeded"})
    cancel = await stack.http.post(f"/v1/generations/{job_id}/cancel")
    assert cancel.status_code == 409 and "already ended: succeeded" in cancel.json()["detail"]
    assert (await stack.http.get(f"/v1/generations/{job_id}")).json()["status"] == "succeeded"
    image = await stack.http.get(f"/v1/generations/{job_id}/image")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    delivered = job["delivered"] or job["artifacts"][-1]
    name = unquote(urlparse(delivered["uri"]).path.rsplit("/", 1)[-1])
    # The artifact is gone (retention, a lost disk): the client is told, not given a 500.
    (stack.settings.artifacts_path / job_id / name).unlink()
    gone = await stack.http.get(f"/v1/generations/{job_id}/image")
    assert gone.status_code == 410 and "gone" in gone.json()["detail"]
    assert str(stack.settings.artifacts_path) not in gone.text  # no server path to clients


async def test_admin_lanes_lists_every_lane_of_the_routes_file(stack: Stack) -> None:
    lanes = (await stack.http.get("/v1/admin/lanes")).json()
    assert [item["lane"] for item in lanes] == sorted(load_routes(None).lanes)
    draft = (await stack.http.get("/v1/admin/lanes/draft")).json()
    assert draft["desired"]["stable"]["model"] == "tiny-sd"
    assert any(i["status"]["health"] == "ready" for i in draft["instances"])
    missing = await stack.http.get("/v1/admin/lanes/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]


def _urls(value: object) -> list[str]:
    """Every string anywhere in a JSON document that names an image."""
    if isinstance(value, dict):
        return [
            u
            for k, v in value.items()
            for u in ([v] if k in ("uri", "artifact_uri", "rendered_uri") and v else _urls(v))
        ]
    if isinstance(value, list):
        return [u for v in value for u in _urls(v)]
    return []


async def test_every_image_in_a_response_or_webhook_is_a_url_the_client_can_fetch(
    stack: Stack, receiver: WebhookReceiver
) -> None:
    job_id = await stack.submit(
        {"prompt": 'a poster "BIG SALE"', "intent": "final", "webhook_url": receiver.url}
    )
    job = await stack.wait_for_status(job_id, {"succeeded"}, timeout=120)
    (delivery,) = await receiver.wait_for(1)
    hooked = json.loads(delivery.body)["data"]
    base = stack.settings.public_base_url
    urls = set(_urls(job)) | set(_urls(hooked))
    # Draft, upscaled and repaired images, and the verification's references to them.
    assert len(set(_urls(job["artifacts"]))) >= 2 and job["delivered"]["uri"] in urls
    internal = str(stack.settings.artifacts_path)
    for url in urls:
        assert url.startswith(f"{base}/v1/generations/{job_id}/artifacts/"), url
        assert "file:" not in url and internal not in url
        resp = await stack.http.get(url)
        assert resp.status_code == 200 and resp.headers["content-type"] == "image/png", url
    image = await stack.http.get(f"/v1/generations/{job_id}/image")
    delivered = await stack.http.get(job["delivered"]["uri"])
    assert image.content == delivered.content  # /image is the delivered one
    missing = await stack.http.get(f"/v1/generations/{job_id}/artifacts/nope.png")
    assert missing.status_code == 404 and "nope.png" in missing.json()["detail"]
