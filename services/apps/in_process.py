"""Every consumer group as asyncio tasks in one process: for the A/B harness and tests.

Production runs one process per component (`lanes up`, `lanes run ...`); this runs the
same ``run(settings, stop)`` coroutines side by side on one event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from consumers import lane_worker
from schemas.topics import Topics
from services.apps.kafka_acls import acl_rules, apply_rules
from services.apps.registry import CONSUMERS
from services.config.routes import load_routes
from services.config.settings import Settings
from services.kafka.clients import ensure_topics

__all__ = ["LocalStack"]


class LocalStack:
    def __init__(
        self,
        settings: Settings,
        *,
        worker_lanes: list[str] | None = None,
        with_webhooks: bool = True,
        isolated_hosts: bool = False,
        principals: Mapping[str, str] | None = None,
        components: Iterable[str] | None = None,
    ) -> None:
        self.settings = settings
        # The consumer groups to run, by name (None: all of them); a test names the few it
        # needs (a draft job needs router and jobs; the verifier loads an OCR model).
        self.components = None if components is None else set(components)
        unknown = (self.components or set()) - {c.name for c in CONSUMERS}
        if unknown:
            raise ValueError(f"no such components {sorted(unknown)}")
        # On a secured cluster: each component connects as its own principal (lanes-<name>,
        # password from this map); ``settings`` (an admin) creates the topics.
        self.principals = principals
        # Each component on a host of its own: its own state dir, nothing shared but the
        # cluster, the object store and the (read-only) model volume.
        self.isolated_hosts = isolated_hosts
        self.topics = Topics(settings.topic_prefix)
        self.worker_lanes = worker_lanes  # None: a worker for every lane in the routes file
        self.with_webhooks = with_webhooks
        self.stops: dict[str, asyncio.Event] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.workers: dict[str, Any] = {}
        self.registries: dict[str, CollectorRegistry] = {}

    def settings_for(self, name: str) -> Settings:
        """The settings component ``name`` runs with (see ``isolated_hosts``, ``principals``)."""
        update: dict[str, Any] = {}
        if self.isolated_hosts:
            update.update(
                state_dir=self.settings.storage.state_dir / "hosts" / name,
                models_dir=self.settings.models_path,
            )
        if self.principals is not None:
            user = f"lanes-{name}"
            update.update(kafka_username=user, kafka_password=SecretStr(self.principals[user]))
        return self.settings.model_copy(update=update) if update else self.settings

    def component_registry(self, name: str) -> CollectorRegistry:
        """The metrics registry of a component (its /metrics in production)."""
        return self.registries.setdefault(name, CollectorRegistry())

    async def start(self) -> None:
        routes = load_routes(self.settings.routes_file)
        await ensure_topics(
            self.settings,
            self.topics.specs(routes.lanes, routes.spill_lanes, self.settings.cluster.partitions()),
        )
        if self.principals is not None:  # each its own user: the rights come first
            await asyncio.to_thread(apply_rules, self.settings, acl_rules(self.settings, routes))
        for comp in CONSUMERS:
            if comp.name in ("webhooks", "webhook-retries") and not self.with_webhooks:
                continue
            if self.components is not None and comp.name not in self.components:
                continue
            self.start_component(comp.name, self._runner(comp.runner(), comp.name))
        for lane in routes.lanes if self.worker_lanes is None else self.worker_lanes:
            self.start_worker(lane)

    def _runner(self, run: Any, name: str) -> Any:
        return lambda stop: run(
            self.settings_for(name), stop, registry=self.component_registry(name)
        )

    def start_component(self, name: str, make: Any) -> None:
        stop = self.stops[name] = asyncio.Event()
        coro: Coroutine[Any, Any, None] = make(stop)
        self.tasks[name] = asyncio.create_task(coro, name=name)

    def start_worker(
        self, lane: str, settings: Settings | None = None, instance: str | None = None
    ) -> str:
        """One worker instance (a GPU's process in production); its name keys ``workers``."""
        name = instance or lane
        self.start_component(
            f"worker-{name}",
            lambda stop: lane_worker.run(
                settings or self.settings_for(f"worker-{name}"),
                lane,
                stop,
                instance=instance,
                on_ready=lambda w: self.workers.__setitem__(name, w),
            ),
        )
        return name

    async def wait_workers_ready(
        self, timeout: float = 120, names: Iterable[str] | None = None
    ) -> None:
        """Until every worker (by default one per lane this stack started) is ready."""
        if names is not None:
            lanes = set(names)
        elif self.worker_lanes is None:
            lanes = set(load_routes(self.settings.routes_file).lanes)
        else:
            lanes = set(self.worker_lanes)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (lanes <= set(self.workers) and all(self.workers[x].all_ready for x in lanes)):
            self.check_alive()
            if loop.time() > deadline:
                raise TimeoutError(f"workers {sorted(lanes)} not ready in {timeout}s")
            await asyncio.sleep(0.1)

    async def stop_component(self, name: str) -> None:
        self.stops[name].set()
        await asyncio.wait_for(self.tasks.pop(name), 60)

    def check_alive(self) -> None:
        for name, task in self.tasks.items():
            if task.done():
                raise RuntimeError(f"component {name} died: {task.exception()!r}")

    async def stop(self) -> None:
        for event in self.stops.values():
            event.set()
        results = await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
