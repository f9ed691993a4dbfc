"""Every Lanes component, once: its name, what it runs, its consumer group, its local
metrics port and its Kubernetes resources. `lanes run`, `lanes up`, the in-process stack,
the Helm chart (files/components.yaml) and the benchmarks read this list; nothing else
names components.

A component's name is what `lanes run NAME` takes and what its Deployment is called
(``lanes-NAME``). Lane workers are one component per lane (``worker-<lane>``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.topics import Groups
from services.config.routes import Routes
from services.config.settings import Settings

__all__ = [
    "Component",
    "CONSUMERS",
    "CLIENTS",
    "GATEWAY",
    "WORKER",
    "components",
    "consumer",
    "workers",
    "child_env",
    "command",
]

CPU_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "500m", "memory": "1Gi"},
    "limits": {"memory": "2Gi"},
}


@dataclass(frozen=True)
class Component:
    name: str
    # The consumers module whose ``run(settings, stop=None, *, registry=None)`` is the
    # component (None: the gateway, an HTTP app).
    module: str | None
    group: Callable[[Groups], str] | None  # its consumer group (None: no group)
    metrics_port: int  # `lanes up`'s local /metrics port (0: the gateway's own port)
    resources: dict[str, Any] = field(default_factory=lambda: dict(CPU_RESOURCES))
    args: tuple[str, ...] = ()  # extra `lanes run` arguments (a worker's --lane)
    lane: str | None = None
    # Its Kafka rights (``lanes kafka acls``): the topics it reads and writes, by their
    # ``Topics`` names ("lanes": every lane and spill queue), and whether it measures the
    # lanes' lag (Describe on the lane workers' groups).
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    lag: bool = False

    @property
    def principal(self) -> str:
        """Its Kafka user (SCRAM) and the name of its Kubernetes Secret's suffix."""
        return f"lanes-{self.name}"

    @property
    def run_args(self) -> tuple[str, ...]:
        """`lanes run ...` for this component."""
        return ("worker", *self.args) if self.lane else (self.name,)

    def runner(self) -> Callable[..., Coroutine[Any, Any, None]]:
        """The component's ``run`` coroutine function (imported on demand)."""
        assert self.module is not None, f"{self.name} is not a consumer group"
        return importlib.import_module(self.module).run  # type: ignore[no-any-return]


GATEWAY = Component(
    "gateway",
    None,
    None,
    0,
    resources={"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
    reads=(
        "jobs",
        "control",
        "workers",
        "gateways",
        "keys",
        "webhook_deliveries",
        "webhooks_dlq",
        "ops_results",
    ),
    # requests and cancels; its fleet heartbeat; the console's ops actions and replays
    writes=("requests", "gateways", "ops", "webhooks_retry"),
    lag=True,
)
_DELIVERY = ("webhook_deliveries", "webhooks_retry", "webhooks_dlq", "dlq")
CONSUMERS: tuple[Component, ...] = (
    Component(
        "router",
        "consumers.router",
        lambda g: g.router,
        9101,
        reads=("requests", "control", "workers"),
        writes=("lanes", "deferred", "dlq"),
        lag=True,
    ),
    Component(
        "jobs",
        "consumers.jobs",
        lambda g: g.jobs,
        9102,
        reads=("requests", "deferred", "renders", "verifications", "lanes", "jobs"),
        writes=("jobs", "dlq"),
    ),
    Component(
        "verifier",
        "consumers.verifier",
        lambda g: g.verifier,
        9103,
        reads=("renders", "control"),
        writes=("verifications", "renders", "lanes", "dlq"),
    ),
    Component(
        "webhooks",
        "consumers.webhooks",
        lambda g: g.webhooks,
        9104,
        reads=("jobs", "webhook_deliveries"),
        writes=_DELIVERY,
    ),
    Component(
        "control",
        "consumers.control",
        lambda g: g.control,
        9105,
        reads=("ops", "renders", "verifications", "workers", "control"),
        writes=("control", "ops_results", "dlq"),
        lag=True,
    ),
    Component(
        "webhook-retries",
        "consumers.webhook_retries",
        lambda g: g.webhook_retries,
        9106,
        reads=("webhooks_retry", "webhook_deliveries"),
        writes=_DELIVERY,
    ),
    Component(
        "deferred",
        "consumers.deferred",
        lambda g: g.deferred,
        9107,
        reads=("deferred", "control", "workers"),
        writes=("lanes", "deferred", "dlq"),
        lag=True,
    ),
)
# Principals that are not processes of the stack: the marketplace's SDK publisher and the
# operators' `lanes ops` / `lanes webhooks replay` tools.
CLIENTS: tuple[Component, ...] = (
    Component("sdk", None, None, 0, writes=("requests",)),
    Component(
        "ops",
        None,
        None,
        0,
        reads=("ops_results", "control", "workers", "webhooks_dlq"),
        writes=("ops", "webhooks_retry"),
    ),
)
# Lane workers: one process per GPU; `lanes up` gives each lane's a port from 9111 up.
WORKER = Component(
    "worker",
    "consumers.lane_worker",
    None,
    9111,
    resources={
        "requests": {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": 1},
        "limits": {"memory": "12Gi", "nvidia.com/gpu": 1},
    },
    # its lane and the spill queues it assists; heartbeats; a cascade's next lane
    reads=("lanes", "control", "workers", "jobs"),
    writes=("renders", "workers", "lanes", "dlq"),
)


def consumer(name: str) -> Component:
    for comp in CONSUMERS:
        if comp.name == name:
            return comp
    raise KeyError(f"no consumer component {name!r} (have {[c.name for c in CONSUMERS]})")


def _lane_group(lane: str) -> Callable[[Groups], str]:
    return lambda groups: groups.lane(lane)


def workers(routes: Routes) -> list[Component]:
    """One worker component per lane of the routes file."""
    return [
        Component(
            f"worker-{lane}",
            WORKER.module,
            _lane_group(lane),
            WORKER.metrics_port + i,
            resources=WORKER.resources,
            args=("--lane", lane),
            lane=lane,
            reads=WORKER.reads,
            writes=WORKER.writes,
        )
        for i, lane in enumerate(sorted(routes.lanes))
    ]


def components(routes: Routes) -> list[Component]:
    """Everything `lanes up` runs: the gateway, every consumer group, a worker per lane."""
    return [GATEWAY, *CONSUMERS, *workers(routes)]


def command(component: Component, *extra: str) -> list[str]:
    """The command line that runs ``component`` in a process of its own."""
    return [sys.executable, "-m", "services.apps.cli", "run", *component.run_args, *extra]


def child_env(settings: Settings, base: Mapping[str, str], **overrides: str) -> dict[str, str]:
    """The environment of a component process started from ``settings``: ``base`` (the
    parent's environment), then what every child must share with the parent (the cluster,
    the topic and group prefixes, the state, artifact and model directories, the routes
    file), then ``overrides`` (its metrics port, say)."""
    env = dict(base)
    env.update(
        LANES_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        LANES_TOPIC_PREFIX=settings.topic_prefix,
        LANES_GROUP_PREFIX=settings.cluster.group_prefix,
        LANES_STATE_DIR=str(settings.storage.state_dir.resolve()),
        LANES_ARTIFACT_DIR=str(settings.artifacts_path),
        LANES_MODELS_DIR=str(settings.models_path),
        LANES_TOPIC_REPLICATION_FACTOR=str(settings.cluster.replication_factor),
        LANES_TOPIC_MIN_INSYNC_REPLICAS=str(settings.cluster.min_insync_replicas),
    )
    if settings.routes_file is not None:
        env["LANES_ROUTES_FILE"] = str(settings.routes_file)
    conn = settings.kafka_connection  # how the parent connects, the child does too
    env["LANES_KAFKA_SECURITY_PROTOCOL"] = conn.security_protocol
    env["LANES_KAFKA_SASL_MECHANISM"] = conn.sasl_mechanism
    for name, value in (
        ("LANES_KAFKA_USERNAME", conn.username),
        ("LANES_KAFKA_PASSWORD", conn.password.get_secret_value() if conn.password else None),
        ("LANES_KAFKA_CA_FILE", conn.ca_file),
        ("LANES_KAFKA_CERT_FILE", conn.cert_file),
        ("LANES_KAFKA_KEY_FILE", conn.key_file),
    ):
        if value is not None:
            env[name] = str(value)
    env.update(overrides)
    return env
