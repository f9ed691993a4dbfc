"""Test helpers: the whole Lanes stack as asyncio tasks on the real broker, a webhook
receiver on loopback, and small Kafka readers."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from aiokafka import AIOKafkaConsumer, TopicPartition
from fastapi import FastAPI, Request, Response

from producers.kafka import make_producer, make_raw_consumer
from services.apps.gateway import create_app
from services.apps.in_process import LocalStack
from services.auth.key_admin import create_key
from services.config.settings import Settings
from services.process.ops_server import EmbeddedServer

__all__ = [
    "Stack",
    "WebhookReceiver",
    "read_topic",
    "produce_raw",
    "write_routes",
    "wait_until",
    "unsigned",
    "running_stack",
]


class Stack(LocalStack):
    """Gateway, router, a worker per lane, verifier, job state and webhooks, in-process."""

    def __init__(
        self,
        settings: Settings,
        *,
        worker_lanes: list[str] | None = None,
        isolated_hosts: bool = False,
        principals: dict[str, str] | None = None,
        components: list[str] | None = None,
    ) -> None:
        super().__init__(
            settings,
            worker_lanes=worker_lanes,
            isolated_hosts=isolated_hosts,
            principals=principals,
            components=components,
        )
        self.gateway: EmbeddedServer | None = None
        self.gateway_task: asyncio.Task[None] | None = None
        self.http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{settings.gateway.port}", timeout=30
        )

    async def start(self) -> None:
        await super().start()
        # Every call to /v1 needs a key: the stack's own client acts as an admin (it sees
        # every tenant's jobs and may submit for any); tests of tenancy mint their own.
        self.admin_key = await self.new_key("ops", ["admin"])
        self.http.headers["Authorization"] = f"Bearer {self.admin_key}"
        await self.start_gateway()

    async def new_key(self, tenant: str, scopes: list[str] | None = None, **kw: Any) -> str:
        """Mint a key on this stack's ``lanes.keys`` (read and write scopes by default)."""
        key, _ = await create_key(
            self.settings, tenant, scopes or ["generations:read", "generations:write"], **kw
        )  # type: ignore[arg-type]
        return key

    def client(self, key: str | None) -> httpx.AsyncClient:
        """An HTTP client of the gateway sending ``key`` (None: no Authorization)."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=str(self.http.base_url), timeout=30, headers=headers)

    def metric(self, lane: str, name: str, **labels: str) -> float:
        labels = {"lane": lane, "model": "tiny-sd", "version": "tiny-v1", **labels}
        value = self.workers[lane].registry.get_sample_value(name, labels)
        return float(value or 0.0)

    async def start_gateway(self) -> None:
        app = create_app(self.settings_for("gateway"))
        self.gateway = EmbeddedServer(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=self.settings.gateway.port,
                log_level="warning",
            )
        )
        self.gateway_task = asyncio.create_task(self.gateway.serve())
        await wait_until(self._gateway_ready, timeout=60, what="gateway ready")

    async def _gateway_ready(self) -> bool:
        try:
            return (await self.http.get("/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def stop_gateway(self) -> None:
        assert self.gateway is not None and self.gateway_task is not None
        self.gateway.should_exit = True
        await asyncio.wait_for(self.gateway_task, 30)
        self.gateway = self.gateway_task = None

    async def stop(self) -> None:
        if self.gateway is not None:
            await self.stop_gateway()
        try:
            await super().stop()
        finally:
            await self.http.aclose()

    async def submit(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> str:
        resp = await self.http.post("/v1/generations", json=body, headers=headers or {})
        assert resp.status_code == 202, resp.text
        return str(resp.json()["job_id"])

    async def wait_for_status(
        self, job_id: str, statuses: set[str], timeout: float = 90
    ) -> dict[str, Any]:
        found: dict[str, Any] = {}

        async def check() -> bool:
            self.check_alive()
            resp = await self.http.get(f"/v1/generations/{job_id}")
            if resp.status_code == 200:
                found.update(resp.json())
                return found.get("status") in statuses
            return False

        await wait_until(check, timeout=timeout, what=f"{job_id} in {statuses}")
        return found


def unsigned(value: Any) -> Any:
    """A job's JSON with the signatures cut from its image URLs (each GET signs afresh)."""
    if isinstance(value, dict):
        return {k: unsigned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unsigned(v) for v in value]
    if isinstance(value, str) and "?expires=" in value:
        return value.split("?expires=", 1)[0]
    return value


async def wait_until(
    check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that records webhook deliveries."""

    port: int
    # Answers to give first (a status, or a status and headers), then 204.
    statuses: list[int | tuple[int, dict[str, str]]] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    server: EmbeddedServer | None = None
    task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def start(self) -> None:
        app = FastAPI()

        @app.post("/hooks")
        async def hook(request: Request) -> Response:
            self.deliveries.append(
                Delivery(dict(request.headers), await request.body(), time.time())
            )
            answer = self.statuses.pop(0) if self.statuses else 204
            status, headers = answer if isinstance(answer, tuple) else (answer, {})
            return Response(status_code=status, headers=headers)

        self.server = EmbeddedServer(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        assert self.server is not None and self.task is not None
        self.server.should_exit = True
        await self.task

    async def wait_for(self, count: int, timeout: float = 60) -> list[Delivery]:
        await wait_until(
            lambda: len(self.deliveries) >= count,
            timeout=timeout,
            what=f"{count} webhook deliveries",
        )
        return self.deliveries


async def _reader(settings: Settings, topic: str) -> AIOKafkaConsumer:
    """A started consumer outside any group, from the topic's beginning."""
    consumer = make_raw_consumer(
        settings,
        topic,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    return consumer


async def read_topic(settings: Settings, topic: str, *, settle_s: float = 0.0) -> list[Any]:
    """Every record on a topic up to its end offsets as of now (after ``settle_s``, for a
    test that lets stragglers arrive: a duplicate that must not come, say). A record that
    is produced later is not waited for: wrap the read in ``wait_until`` for that."""
    if settle_s:
        await asyncio.sleep(settle_s)
    consumer = await _reader(settings, topic)
    records: list[Any] = []
    try:
        parts = consumer.assignment() or set()
        while not parts:
            await consumer.getmany(timeout_ms=50)
            parts = consumer.assignment()
        ends = await consumer.end_offsets(list(parts))
        remaining = {tp for tp, end in ends.items() if end > 0}
        while remaining:
            for recs in (await consumer.getmany(timeout_ms=100)).values():
                records.extend(
                    r for r in recs if r.offset < ends[TopicPartition(r.topic, r.partition)]
                )
            remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
    finally:
        await consumer.stop()
    return records


async def produce_raw(
    settings: Settings, topic: str, value: bytes | None, key: bytes | None = None
) -> None:
    producer = make_producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value=value, key=key)
    finally:
        await producer.stop()


def write_routes(path: Any, **lanes: dict[str, Any]) -> Any:
    """A routes file on the tiny model; each keyword is a lane's settings."""
    import yaml

    doc = {
        "models": {"tiny-sd": {"tiny": {"seed": 0}, "version": "tiny-v1"}},
        "lanes": {name: {"model": "tiny-sd", **spec} for name, spec in lanes.items()},
        "intents": {"draft": "draft", "final": "final" if "final" in lanes else "draft"},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


@contextlib.asynccontextmanager
async def running_stack(
    settings: Settings,
    *,
    worker_lanes: list[str] | None = None,
    isolated_hosts: bool = False,
    principals: dict[str, str] | None = None,
    components: list[str] | None = None,
    **updates: Any,
) -> AsyncIterator[Stack]:
    """A started Stack on settings with ``updates`` (a routes file, a memory budget...);
    with ``principals``, each component connects as its own Kafka user; ``components``:
    the consumer groups it runs (None: all)."""
    stack = Stack(
        settings.model_copy(update=updates),
        worker_lanes=worker_lanes,
        isolated_hosts=isolated_hosts,
        principals=principals,
        components=components,
    )
    await stack.start()
    try:
        yield stack
    finally:
        await stack.stop()


@contextlib.asynccontextmanager
async def running_gateway(
    settings: Settings, key: str | None = None
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """One more gateway replica on ``settings.gateway.port`` (its app, and a client of it
    that sends ``key``)."""
    app = create_app(settings)
    server = EmbeddedServer(
        uvicorn.Config(app, host="127.0.0.1", port=settings.gateway.port, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    http = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{settings.gateway.port}",
        timeout=30,
        headers={"Authorization": f"Bearer {key}"} if key else {},
    )

    async def ready() -> bool:
        try:
            return (await http.get("/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        await wait_until(ready, timeout=60, what="gateway replica ready")
        yield app, http
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        await http.aclose()


# The console's sign-in form, as a browser without JavaScript posts it.
def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, page[:500]
    return match.group(1)


async def sign_in(web: httpx.AsyncClient, key: str, next_url: str = "/") -> httpx.Response:
    token = csrf_of((await web.get("/login")).text)
    return await web.post("/login", data={"key": key, "csrf": token, "next": next_url})
