"""The gateway's routes without a broker: the real app, its key ring filled in memory, and
the job view, publisher and artifact store swapped through ``app.dependency_overrides``.
The 401/403/404 rules, tenancy, quotas and signed URLs, in milliseconds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient

from schemas.records import Artifact, JobState
from schemas.spec import GenerationSpec
from services.apps.gateway import create_app
from services.apps.gateway.deps import get_jobs, get_publisher, get_store
from services.apps.gateway.views import Accepted
from services.auth.api_keys import new_key
from services.config.settings import Quota, Settings
from services.domain.admission import TokenBuckets
from services.domain.job_index import JobFilter


class MemoryJobs:
    """The JobReader protocol over a dict."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobState] = {}
        self.accepted = Accepted()
        self.ready_lanes: set[str] = set()

    def serving(self, lane: str) -> bool:
        return lane in self.ready_lanes

    def job(self, job_id: str) -> JobState | None:
        return self.jobs.get(job_id)

    def page(
        self, flt: JobFilter, limit: int, cursor: str | None = None
    ) -> tuple[list[JobState], str | None]:
        found = [
            j
            for j in self.jobs.values()
            if flt.tenant is None or (j.spec is not None and j.spec.tenant == flt.tenant)
        ]
        return found[:limit], None

    def queue_position(self, job: JobState, tenant: str | None = None) -> int:
        ahead = [
            j
            for j in self.jobs.values()
            if j.status == "deferred"
            and j.job_id < job.job_id
            and (tenant is None or (j.spec is not None and j.spec.tenant == tenant))
        ]
        return 1 + len(ahead)


class RecordingPublisher:
    """Accepts like the real one (quota by the spec's tenant) and records what it sent."""

    def __init__(self, quotas: TokenBuckets | None = None) -> None:
        self.sent: list[GenerationSpec] = []
        self.canceled: list[str] = []
        self.quotas = quotas

    async def accept(self, spec: GenerationSpec, idempotency_key: str | None) -> tuple[str, bool]:
        if self.quotas is not None and self.quotas.take(spec.tenant or "") is not None:
            raise HTTPException(429, "over quota", headers={"Retry-After": "1"})
        self.sent.append(spec)
        return f"job_{len(self.sent)}", False

    async def cancel(self, job_id: str) -> None:
        self.canceled.append(job_id)


class MemoryStore:
    def get(self, uri: str) -> bytes:
        return b"\x89PNG " + uri.encode()


def job(job_id: str, tenant: str, status: str = "succeeded") -> JobState:
    return JobState(
        job_id=job_id,
        status=status,  # type: ignore[arg-type]
        spec=GenerationSpec(prompt="a cup", tenant=tenant),
        artifacts=[
            Artifact(
                stage="draft",
                uri=f"file:///srv/{job_id}/draft-a1.png",
                width=8,
                height=8,
                model="m",
                version="v",
            )
        ],
        finished_at=datetime.now(UTC) if status == "succeeded" else None,
    )


class Gateway:
    def __init__(self, tmp: Path, **settings: Any) -> None:
        self.settings = Settings(
            state_dir=tmp, kafka_bootstrap="127.0.0.1:1", gateway_port=8123, **settings
        )
        self.app = create_app(self.settings)
        self.jobs = MemoryJobs()
        self.publisher = RecordingPublisher(
            TokenBuckets(
                self.settings.admission.tenant_quotas, self.settings.admission.default_quota
            )
        )
        self.app.dependency_overrides[get_jobs] = lambda: self.jobs
        self.app.dependency_overrides[get_publisher] = lambda: self.publisher
        self.app.dependency_overrides[get_store] = lambda: MemoryStore()
        self.client = TestClient(self.app)  # no lifespan: nothing reaches for Kafka

    def key(self, tenant: str, scopes: list[str] | None = None, **kw: Any) -> str:
        key, record = new_key(tenant, scopes or ["generations:read", "generations:write"], **kw)  # type: ignore[arg-type]
        self.app.state.auth.keys.view.items[record.key_id] = record
        return key

    def revoke(self, key: str) -> None:
        items = self.app.state.auth.keys.view.items
        key_id = key.split("_")[1]
        items[key_id] = items[key_id].model_copy(update={"revoked": True})

    def call(self, method: str, path: str, key: str | None = None, **kw: Any) -> Any:
        headers = dict(kw.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return self.client.request(method, path, headers=headers, **kw)


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    yield Gateway(tmp_path)


ROUTES = [
    ("POST", "/v1/generations", {"json": {"prompt": "a cup"}}),
    ("GET", "/v1/generations", {}),
    ("GET", "/v1/generations/job_a", {}),
    ("GET", "/v1/generations/job_a/events", {}),
    ("POST", "/v1/generations/job_a/cancel", {}),
    ("GET", "/v1/admin/lanes", {}),
]


@pytest.mark.parametrize(("method", "path", "kw"), ROUTES)
def test_every_api_route_needs_a_key(gw: Gateway, method: str, path: str, kw: Any) -> None:
    good = gw.key("acme")
    wrong_secret = good[: -len("x")] + ("A" if good[-1] != "A" else "B")
    expired = gw.key("acme", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    revoked = gw.key("acme")
    gw.revoke(revoked)
    answers = []
    for header in [
        None,
        "Basic dXNlcjpwYXNz",
        "Bearer ",
        f"Bearer {good[:-1]}",  # wrong length
        "Bearer lanes_aaaaaaaaaaaa_" + "x" * 40,  # unknown id
        f"Bearer {wrong_secret}",
        f"Bearer {expired}",
        f"Bearer {revoked}",
        good,  # no scheme
    ]:
        resp = gw.call(method, path, headers={"Authorization": header} if header else {}, **kw)
        assert resp.status_code == 401, (header, resp.text)
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert resp.headers["content-type"] == "application/problem+json"
        answers.append(resp.json()["detail"])
    assert len(set(answers)) == 1  # one reason, never which part was wrong
    assert good not in str(answers)
    assert gw.publisher.sent == [] and gw.publisher.canceled == []  # nothing published


def test_open_endpoints_need_no_key(gw: Gateway) -> None:
    assert gw.call("GET", "/healthz").status_code == 200
    assert gw.call("GET", "/metrics").status_code == 200


def test_the_jobs_tenant_is_the_keys(gw: Gateway) -> None:
    key = gw.key("acme")
    assert gw.call("POST", "/v1/generations", key, json={"prompt": "a cup"}).status_code == 202
    same = gw.call("POST", "/v1/generations", key, json={"prompt": "a", "tenant": "acme"})
    assert same.status_code == 202
    other = gw.call("POST", "/v1/generations", key, json={"prompt": "a", "tenant": "globex"})
    assert other.status_code == 403 and "acme" in other.json()["detail"]
    assert [s.tenant for s in gw.publisher.sent] == ["acme", "acme"]
    admin = gw.key("ops", ["admin"])
    assert gw.call("POST", "/v1/generations", admin, json={"prompt": "a", "tenant": "globex"})
    assert gw.publisher.sent[-1].tenant == "globex"  # an admin may act for a tenant


def test_scopes(gw: Gateway) -> None:
    gw.jobs.jobs["job_a"] = job("job_a", "acme", status="running")
    reader = gw.key("acme", ["generations:read"])
    writer = gw.key("acme", ["generations:write"])
    assert gw.call("POST", "/v1/generations", reader, json={"prompt": "x"}).status_code == 403
    assert gw.call("POST", "/v1/generations/job_a/cancel", reader).status_code == 403
    assert gw.call("GET", "/v1/generations/job_a", writer).status_code == 403
    assert gw.call("GET", "/v1/generations/job_a", reader).status_code == 200
    assert gw.call("GET", "/v1/admin/lanes", reader).status_code == 403
    assert gw.publisher.sent == [] and gw.publisher.canceled == []


def test_another_tenants_job_is_404_on_every_route(gw: Gateway) -> None:
    gw.jobs.jobs["job_a"] = job("job_a", "acme", status="running")
    gw.jobs.accepted.add("job_q", "fp", "acme")  # accepted, not folded yet
    b = gw.key("globex")
    for job_id in ("job_a", "job_q", "job_nope"):
        for method, path in [
            ("GET", f"/v1/generations/{job_id}"),
            ("GET", f"/v1/generations/{job_id}/events"),
            ("GET", f"/v1/generations/{job_id}/image"),
            ("GET", f"/v1/generations/{job_id}/artifacts/draft-a1.png"),
            ("POST", f"/v1/generations/{job_id}/cancel"),
        ]:
            resp = gw.call(method, path, b)
            assert resp.status_code == 404, (method, path, resp.text)
    assert gw.publisher.canceled == []
    a = gw.key("acme")
    assert gw.call("GET", "/v1/generations/job_q", a).json()["status"] == "queued"
    assert gw.call("POST", "/v1/generations/job_a/cancel", a).status_code == 202
    assert gw.publisher.canceled == ["job_a"]


def test_lists_and_queue_positions_show_only_the_tenants_jobs(gw: Gateway) -> None:
    for i, tenant in enumerate(["acme", "globex", "acme", "globex", "acme"]):
        gw.jobs.jobs[f"job_{i}"] = job(f"job_{i}", tenant, status="deferred")
    a = gw.key("acme")
    items = gw.call("GET", "/v1/generations", a).json()["items"]
    assert sorted(j["job_id"] for j in items) == ["job_0", "job_2", "job_4"]
    assert {j["job_id"]: j["queue_position"] for j in items} == {
        "job_0": 1,
        "job_2": 2,
        "job_4": 3,
    }
    assert gw.call("GET", "/v1/generations?tenant=globex", a).status_code == 403
    admin = gw.key("ops", ["admin"])
    assert len(gw.call("GET", "/v1/generations", admin).json()["items"]) == 5
    assert len(gw.call("GET", "/v1/generations?tenant=globex", admin).json()["items"]) == 2
    assert gw.call("GET", "/v1/generations/job_4", admin).json()["queue_position"] == 5


def test_a_routed_job_says_when_no_worker_of_its_lane_is_ready(gw: Gateway) -> None:
    gw.jobs.jobs["job_a"] = job("job_a", "acme", status="routed").model_copy(
        update={"lane": "draft"}
    )
    a = gw.key("acme")
    body = gw.call("GET", "/v1/generations/job_a", a).json()
    assert body["status"] == "routed" and "no worker of lane 'draft' is ready" in body["waiting"]
    gw.jobs.ready_lanes.add("draft")
    assert "waiting" not in gw.call("GET", "/v1/generations/job_a", a).json()


def test_quota_is_the_keys_tenants(tmp_path: Path) -> None:
    gw = Gateway(tmp_path, tenant_quotas={"acme": Quota(rate_per_s=0.001, burst=2)})
    a, b = gw.key("acme"), gw.key("globex")
    codes = [gw.call("POST", "/v1/generations", a, json={"prompt": "x"}).status_code for _ in "xyz"]
    assert codes == [202, 202, 429]
    # Naming another tenant does not escape the quota: it is refused outright.
    assert (
        gw.call("POST", "/v1/generations", a, json={"prompt": "x", "tenant": "globex"}).status_code
        == 403
    )
    assert gw.call("POST", "/v1/generations", b, json={"prompt": "x"}).status_code == 202


def test_failed_authentications_are_throttled_per_address(tmp_path: Path) -> None:
    gw = Gateway(tmp_path, auth_failure_burst=3, auth_failure_rate_per_s=0.01)
    good = gw.key("acme")
    bad = "lanes_aaaaaaaaaaaa_" + "x" * 40
    codes = [gw.call("GET", "/v1/generations", bad).status_code for _ in range(5)]
    assert codes == [401, 401, 401, 429, 429]
    throttled = gw.call("GET", "/v1/generations", good)  # the address is throttled first
    assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) >= 1


def test_image_urls_are_signed_and_fetchable_without_a_key(gw: Gateway) -> None:
    gw.jobs.jobs["job_a"] = job("job_a", "acme")
    a = gw.key("acme")
    body = gw.call("GET", "/v1/generations/job_a", a).json()
    url = body["artifacts"][0]["uri"]
    assert url.startswith("http://127.0.0.1:8123/v1/generations/job_a/artifacts/draft-a1.png?")
    path = url.removeprefix("http://127.0.0.1:8123")
    fetched = gw.call("GET", path)  # no Authorization
    assert fetched.status_code == 200 and fetched.content.startswith(b"\x89PNG")
    unsigned = gw.call("GET", path.split("?")[0])
    assert unsigned.status_code == 403 and "not signed" in unsigned.json()["detail"]
    tampered = gw.call("GET", path[:-1] + ("0" if path[-1] != "0" else "1"))
    assert tampered.status_code == 403 and "does not match" in tampered.json()["detail"]
    moved = gw.call("GET", path.replace("job_a", "job_b"))  # the signature is the path's
    assert moved.status_code == 403
    extended = gw.call("GET", path.replace("expires=", "expires=9"))
    assert extended.status_code == 403
    # A key with read scope for the tenant may fetch the unsigned route; another may not.
    assert gw.call("GET", path.split("?")[0], a).status_code == 200
    assert gw.call("GET", "/v1/generations/job_a/image", a).status_code == 200
    assert gw.call("GET", path.split("?")[0], gw.key("globex")).status_code == 404


def test_expired_urls_say_so(tmp_path: Path) -> None:
    gw = Gateway(tmp_path, artifact_url_ttl_s=0.001)
    gw.jobs.jobs["job_a"] = job("job_a", "acme")
    url = gw.call("GET", "/v1/generations/job_a", gw.key("acme")).json()["artifacts"][0]["uri"]
    time.sleep(1.1)
    resp = gw.call("GET", url.removeprefix("http://127.0.0.1:8123"))
    assert resp.status_code == 410 and "expired" in resp.json()["detail"]


def test_the_openapi_document_declares_the_bearer_scheme_and_answers(gw: Gateway) -> None:
    doc = gw.call("GET", "/openapi.json").json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    post = doc["paths"]["/v1/generations"]["post"]
    assert {"401", "403"} <= set(post["responses"]) and post["security"]
