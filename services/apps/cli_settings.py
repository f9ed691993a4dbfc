"""The settings every `lanes` command builds first (logging configured from them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.config.settings import Settings

__all__ = ["settings_from_env", "component_settings", "wait_for_stop_signal"]


def settings_from_env() -> Settings:
    """``Settings()`` from ``LANES_*``, with logging set up; imported lazily so that
    `lanes --help` stays fast."""
    import typer
    from pydantic import ValidationError

    from services.config.settings import Settings
    from services.process.logs import configure_logging

    try:
        settings = Settings()
    except ValidationError as exc:
        # One line a container's log shows (and the process exits 2, so it never is ready):
        # each reason, without the values (they may hold secrets).
        reasons = "; ".join(
            f"{'.'.join(map(str, e['loc'])) + ': ' if e['loc'] else ''}"
            f"{e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        typer.echo(f"invalid settings: {reasons}", err=True)
        raise typer.Exit(2) from None
    configure_logging(settings.process.log_level, settings.process.log_json)
    return settings


def component_settings(component: str | None = None) -> Settings:
    """``settings_from_env()`` for a component about to start: when the cluster refuses
    this process (authentication, TLS, protocol), exit 2 now with the one-line reason
    (logged as ``kafka_access_refused``) rather than retry what waiting cannot fix."""
    import asyncio

    import typer

    from services.exceptions import KafkaAccessRefused
    from services.kafka.clients import check_access

    settings = settings_from_env()
    if component is not None:  # spans over OTLP when a collector is named (else no-ops)
        from services.process.tracing import configure_tracing

        configure_tracing(
            f"lanes-{component}",
            settings.process.trace_sample_ratio,
            settings.cluster.instance_id,
        )
    try:
        asyncio.run(check_access(settings))
    except KafkaAccessRefused as exc:
        typer.echo(f"refused by Kafka: {exc}", err=True)
        raise typer.Exit(2) from None
    return settings


def wait_for_stop_signal() -> None:
    """Block until SIGINT or SIGTERM (the signals are blocked first, so ``sigwait`` takes
    them instead of Python's handlers)."""
    import signal

    stop = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    signal.sigwait(stop)
