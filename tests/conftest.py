"""One real Kafka broker per test session; uuid topics and groups per test.

Broker, in order of preference: ``LANES_KAFKA_BOOTSTRAP`` (an existing cluster),
testcontainers' Kafka when a Docker engine answers, else the local KRaft process that
``make up`` uses (jars from Maven Central), on a random free port.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.config.settings import Settings
from services.kafka.local_broker import KafkaProcess, free_port
from services.process.logs import configure_logging
from services.storage.local_s3 import WeedProcess
from tests.support import Stack, WebhookReceiver


def _docker_available() -> bool:
    sock = Path("/var/run/docker.sock")
    return sock.exists() or bool(os.environ.get("DOCKER_HOST"))


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("LANES_KAFKA_BOOTSTRAP"):
        yield os.environ["LANES_KAFKA_BOOTSTRAP"]
        return
    if _docker_available() and shutil.which("docker"):
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    kafka = KafkaProcess(tmp_path_factory.mktemp("kafka"), port=free_port())
    try:
        kafka.start()
    except Exception as exc:  # print the broker's log and stop the session
        pytest.exit(f"local Kafka did not start: {exc}\n{kafka.tail(80)}", returncode=3)
    try:
        yield kafka.bootstrap
    finally:
        kafka.stop()


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 server for the session: ``LANES_S3_ENDPOINT_URL`` (an existing one, with a
    bucket named ``lanes``), else SeaweedFS built from its Go module, on loopback."""
    if os.environ.get("LANES_S3_ENDPOINT_URL"):
        yield os.environ["LANES_S3_ENDPOINT_URL"]
        return
    weed = WeedProcess(tmp_path_factory.mktemp("weed"))
    try:
        weed.start()
    except Exception as exc:  # print the server's log and stop the session
        pytest.exit(f"the local S3 server did not start: {exc}\n{weed.tail(60)}", returncode=3)
    try:
        yield weed.endpoint
    finally:
        weed.stop()


@pytest.fixture(scope="session", autouse=True)
def model_volume(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One models directory for the session (LANES_MODELS_DIR), as a fleet's read-only model
    volume: each tiny checkpoint is built once, by whoever needs it first, not by every
    `lanes` process and stack a test starts (the build is keyed by its config)."""
    path = tmp_path_factory.mktemp("models")
    patch = pytest.MonkeyPatch()
    patch.setenv("LANES_MODELS_DIR", str(path))
    try:
        yield path
    finally:
        patch.undo()


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared across the session so the tiny checkpoint is built once."""
    configure_logging("INFO", json=True)
    return tmp_path_factory.mktemp("lanes-state")


def _test_settings(kafka_bootstrap: str, state_dir: Path, tmp_path: Path) -> Settings:
    ns = f"t{uuid.uuid4().hex[:10]}."
    return Settings(
        kafka_bootstrap=kafka_bootstrap,
        topic_prefix=ns,
        group_prefix=ns,
        state_dir=state_dir,
        artifact_dir=tmp_path / "artifacts",
        gateway_port=free_port(),
        webhook_allowed_hosts=["127.0.0.1"],
        # Batching does not pay on this CPU, so the start-up profile would cap every batch
        # at 1; tests of the batching mechanics keep max_batch (one test turns it on).
        batch_calibration=False,
        webhook_backoff_s=0.05,
        webhook_max_attempts=3,
    )


@pytest.fixture
def settings(kafka_bootstrap: str, state_dir: Path, tmp_path: Path) -> Settings:
    """Each test's own topics and groups (a uuid prefix) on the session's broker."""
    return _test_settings(kafka_bootstrap, state_dir, tmp_path)


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    recv = WebhookReceiver(port=free_port())
    await recv.start()
    try:
        yield recv
    finally:
        await recv.stop()


@pytest.fixture(scope="session")
async def shared_stack(
    kafka_bootstrap: str, state_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """One running stack (default routes, a worker per lane) for the whole session."""
    s = Stack(_test_settings(kafka_bootstrap, state_dir, tmp_path_factory.mktemp("shared")))
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture
async def stack(shared_stack: Stack) -> AsyncIterator[Stack]:
    """The session's shared stack: tests that use it look only at their own jobs. A test
    that needs other routes or settings starts its own (``running_stack``)."""
    shared_stack.check_alive()
    await shared_stack.wait_workers_ready()
    yield shared_stack
    shared_stack.check_alive()
