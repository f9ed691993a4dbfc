"""`lanes up`: Kafka, topics and every Lanes process on one machine, logs in the terminal.

Each component runs as its own process (as in production), each with its own /metrics
port. Ctrl-C or SIGTERM stops the components (they drain), then the local broker.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time

import structlog

from producers.settings import parse_bootstrap
from schemas.topics import Topics, TopicSpec
from services.apps import registry
from services.apps.kafka_acls import acl_rules, apply_rules
from services.apps.local_keys import ensure_local_keys
from services.apps.registry import Component
from services.apps.start_order import start_plan, wait_ready
from services.config.routes import Routes, checkpoint_dir, load_routes
from services.config.settings import Settings
from services.kafka.clients import ensure_topics, wait_for_kafka
from services.kafka.local_broker import KafkaProcess, port_open
from services.process.local_jaeger import JaegerProcess

__all__ = ["Component", "components", "run_stack", "prepare_cluster", "topic_specs"]

log = structlog.get_logger("lanes.stack")


def components(settings: Settings) -> list[Component]:
    return registry.components(load_routes(settings.routes_file))


def topic_specs(settings: Settings, routes: Routes) -> list[TopicSpec]:
    """Every topic of the stack, with the partition counts the settings give."""
    return Topics(settings.topic_prefix).specs(
        routes.lanes, routes.spill_lanes, settings.cluster.partitions()
    )


async def prepare_cluster(settings: Settings) -> None:
    routes = load_routes(settings.routes_file)
    await wait_for_kafka(settings)
    created = await ensure_topics(settings, topic_specs(settings, routes))
    log.info("topics_ready", created=created)
    for name, spec in routes.models.items():
        if spec.hosted:
            log.info("hosted_model", model=name, provider=spec.provider, base_url=spec.base_url)
            continue
        path = await asyncio.to_thread(checkpoint_dir, name, spec, settings.models_path)
        log.info("model_ready", model=name, version=spec.version, path=str(path))


def _maybe_start_kafka(settings: Settings) -> KafkaProcess | None:
    """None when a broker of the bootstrap list answers; else the local one, started (only
    for the default single loopback address that nobody named)."""
    addresses = parse_bootstrap(settings.kafka_bootstrap)
    if any(port_open(host, port) for host, port in addresses):
        log.info("kafka_found", bootstrap=settings.kafka_bootstrap)
        return None
    host, port = addresses[0]
    named = "LANES_KAFKA_BOOTSTRAP" in os.environ
    if named or len(addresses) > 1 or host not in ("127.0.0.1", "localhost"):
        raise SystemExit(f"Kafka at {settings.kafka_bootstrap} does not answer")
    kafka = KafkaProcess(
        settings.storage.state_dir.resolve() / "kafka",
        port=int(port),
        controller_port=int(port) + 1,
    )
    log.info("kafka_starting", bootstrap=kafka.bootstrap, log=str(kafka.log_path))
    kafka.start()
    return kafka


async def _pump(name: str, stream: asyncio.StreamReader) -> None:
    prefix = f"{name:>14} | ".encode()
    while line := await stream.readline():
        sys.stderr.buffer.write(prefix + line)
        sys.stderr.buffer.flush()


def _principal_env(settings: Settings, comp: Component) -> dict[str, str]:
    """The component's own Kafka user, when a principals file names them."""
    if settings.cluster.principals_file is None:
        return {}
    passwords = json.loads(settings.cluster.principals_file.read_text())
    if comp.principal not in passwords:
        raise SystemExit(f"{settings.cluster.principals_file} has no password for {comp.principal}")
    return {
        "LANES_KAFKA_USERNAME": comp.principal,
        "LANES_KAFKA_PASSWORD": passwords[comp.principal],
    }


async def _supervise(
    comp: Component, env: dict[str, str], stop: asyncio.Event, settings: Settings
) -> None:
    restarts = 0
    own = _principal_env(settings, comp)
    while not stop.is_set():
        proc = await asyncio.create_subprocess_exec(
            *registry.command(comp),
            env=dict(env, LANES_METRICS_PORT=str(comp.metrics_port), **own),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert proc.stdout is not None
        pump = asyncio.create_task(_pump(comp.name, proc.stdout))
        waiter = asyncio.create_task(proc.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set() and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(waiter, 45)
            except TimeoutError:
                proc.kill()
                await waiter
        stopper.cancel()
        await pump
        if stop.is_set():
            log.info("component_stopped", component=comp.name, code=proc.returncode)
            return
        restarts += 1
        delay = min(30, 2**restarts)
        log.error("component_exited", component=comp.name, code=proc.returncode, restart_in_s=delay)
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            pass


# A lane worker that is not ready by then does not hold the next one back any longer.
LANE_START_TIMEOUT_S = 120.0


def _local_url(host: str, port: int) -> str:
    """Where this machine reaches a process of the stack (a wildcard bind: loopback)."""
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"


async def _start_in_order(
    settings: Settings, comps: list[Component], env: dict[str, str], stop: asyncio.Event
) -> None:
    """The light processes at once, then the lane workers one by one (``start_order``);
    says when the stack serves its first lane, and as each further lane comes up."""
    started = time.monotonic()
    plan = start_plan(load_routes(settings.routes_file), comps)
    tasks = [asyncio.create_task(_supervise(c, env, stop, settings)) for c in plan.at_once]
    gateway = _local_url(settings.gateway.host, settings.gateway.port)
    serving: list[str] = []
    for comp in plan.in_turn:
        if stop.is_set():
            break
        tasks.append(asyncio.create_task(_supervise(comp, env, stop, settings)))
        if comp.lane is None:
            continue
        url = f"{_local_url(settings.process.metrics_host, comp.metrics_port)}/readyz"
        if not await wait_ready(url, timeout_s=LANE_START_TIMEOUT_S, stop=stop):
            log.warning("lane_start_slow", lane=comp.lane, waited_s=LANE_START_TIMEOUT_S)
            continue
        serving.append(comp.lane)
        seconds = round(time.monotonic() - started, 1)
        log.info("lane_ready", lane=comp.lane, seconds=seconds)
        if len(serving) == 1 and await wait_ready(
            f"{gateway}/readyz", timeout_s=LANE_START_TIMEOUT_S, stop=stop
        ):
            rest = [c.lane for c in plan.in_turn if c.lane and c.lane not in serving]
            log.info("stack_ready", seconds=seconds, serving=serving, starting=rest)
            print(  # for the person at the terminal
                f"\nLanes is ready at {gateway} ({seconds:.0f} s): lane {comp.lane!r} serves"
                f" now; {', '.join(rest) or 'no other lane'} start one after another.\n",
                file=sys.stderr,
                flush=True,
            )
    log.info("lanes_started", seconds=round(time.monotonic() - started, 1), ready=serving)
    await asyncio.gather(*tasks)


async def _announce_local_keys(settings: Settings) -> None:
    """Mint (first start) and show the local keys: a newcomer's first job needs no step."""
    paths = await ensure_local_keys(settings)
    lines = ["", f"API keys for this local stack (kept in {paths['tenant'].parent}):"]
    for which, path in paths.items():
        lines.append(f"  {which:6}  {path.read_text().strip()}")
    lines += [
        "`lanes submit` uses the tenant key; sign in to the console with either.",
        "",
    ]
    # Printed for the person at the terminal, never logged (logs are shipped elsewhere).
    print("\n".join(lines), file=sys.stderr, flush=True)


async def run_stack(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    kafka = await asyncio.to_thread(_maybe_start_kafka, settings)
    try:
        await prepare_cluster(settings)
        if settings.cluster.principals_file is not None:  # a secured cluster: the ACLs first
            routes = load_routes(settings.routes_file)
            applied = await asyncio.to_thread(apply_rules, settings, acl_rules(settings, routes))
            log.info("kafka_acls_applied", rules=applied)
        if settings.profile == "local":
            await _announce_local_keys(settings)
        env = registry.child_env(settings, os.environ)
        if settings.profile == "local":
            env.setdefault("LANES_WEBHOOK_ALLOWED_HOSTS", "127.0.0.1,localhost")
        if os.environ.get("LANES_JAEGER") == "1":  # a local trace backend, on request
            jaeger = await asyncio.to_thread(_start_jaeger, settings)
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = jaeger.otlp_endpoint
            env.setdefault("LANES_TRACE_UI_URL", f"{jaeger.query_url}/trace/{{trace_id}}")
        comps = components(settings)
        log.info(
            "stack_starting",
            components=[c.name for c in comps],
            gateway=f"http://{settings.gateway.host}:{settings.gateway.port}",
        )
        await _start_in_order(settings, comps, env, stop)
    finally:
        if kafka is not None:
            log.info("kafka_stopping")
            await asyncio.to_thread(kafka.stop)
        for jaeger in _JAEGER:
            jaeger.stop()
        log.info("stack_stopped")


_JAEGER: list[JaegerProcess] = []


def _start_jaeger(settings: Settings) -> JaegerProcess:
    """Jaeger on loopback (UI and query API on 16686, OTLP/HTTP on 4318), in memory."""
    jaeger = JaegerProcess(settings.storage.state_dir.resolve() / "jaeger", 4318, 16686, 16685)
    jaeger.start()
    _JAEGER.append(jaeger)
    log.info("jaeger_started", ui=jaeger.query_url, otlp=jaeger.otlp_endpoint)
    return jaeger
