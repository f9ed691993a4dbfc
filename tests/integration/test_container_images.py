"""The CPU image as an operator runs it: `make image` builds it; the gateway and every CPU
consumer group run in its containers against the test broker and S3 server (production
profile, non-root), with lane workers from the project's environment; a final job goes
through them to its webhook and its image."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.apps.registry import CONSUMERS
from services.kafka.local_broker import free_port
from services.signing.control import generate_keypair
from tests.containers import build_cpu_image, need_podman, podman
from tests.support import WebhookReceiver, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.slow, pytest.mark.timeout(1200)]

CPU_COMPONENTS = tuple(c.name for c in CONSUMERS)  # every consumer group, from the registry


@pytest.fixture(scope="module")
def cpu_image() -> str:
    need_podman()
    return build_cpu_image()


def test_the_image_is_non_root_labelled_and_runs_lanes(cpu_image: str) -> None:
    (info,) = json.loads(podman("image", "inspect", cpu_image).stdout)
    config = info["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["/usr/bin/tini", "--", "lanes", "run"]
    assert "/var/lib/lanes" in config["Volumes"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    revision = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    if revision.returncode == 0:
        assert labels["org.opencontainers.image.revision"] == revision.stdout.strip()
    assert labels["org.opencontainers.image.source"]
    # The CPU image carries no ML stack.
    out = podman(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "python3",
        cpu_image,
        "-c",
        "import importlib.util as u; print([m for m in ('torch', 'diffusers', 'fastapi',"
        " 'rapidocr_onnxruntime') if u.find_spec(m)])",
    )
    assert out.stdout.strip() == "['fastapi', 'rapidocr_onnxruntime']"


def test_a_container_without_its_settings_exits_with_one_clear_line(cpu_image: str) -> None:
    out = podman("run", "--rm", "--network", "none", cpu_image, "router", check=False)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines == [
        "invalid settings: LANES_KAFKA_BOOTSTRAP must name the cluster outside the local "
        "profile (host:port,...; its default is this machine's loopback)"
    ]


@pytest.fixture
def env(kafka_bootstrap: str, s3_endpoint: str) -> dict[str, str]:
    """A production deployment's settings (on a trusted local network: PLAINTEXT allowed)."""
    ns = f"img{uuid.uuid4().hex[:8]}."
    private, public = generate_keypair()
    gateway_port = free_port()
    return {
        "LANES_PROFILE": "production",
        "LANES_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "LANES_KAFKA_ALLOW_PLAINTEXT": "true",
        "LANES_TOPIC_PREFIX": ns,
        "LANES_GROUP_PREFIX": ns,
        "LANES_ARTIFACTS": f"s3://lanes/{ns.rstrip('.')}",
        "LANES_S3_ENDPOINT_URL": s3_endpoint,
        "LANES_S3_ACCESS_KEY_ID": "lanes-local",
        "LANES_S3_SECRET_ACCESS_KEY": "lanes-local-secret",
        "LANES_WEBHOOK_SECRET": "whsec_aW1hZ2UtdGVzdC13ZWJob29rLXNlY3JldA==",
        "LANES_OPS_KEY": "whsec_aW1hZ2UtdGVzdC1vcHMta2V5LXNlY3JldA==",
        "LANES_ARTIFACT_URL_KEY": "u" * 40,
        "LANES_CONTROL_VERIFY_KEYS": public,
        "LANES_CONTROL_SIGNING_KEY": private,
        "LANES_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "LANES_GATEWAY_PORT": str(gateway_port),
        "LANES_PUBLIC_URL": f"http://127.0.0.1:{gateway_port}",
        "LANES_BATCH_CALIBRATION": "false",
    }


def cli(image: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The `lanes` CLI of the image, as an operator runs it."""
    flags = [f"--env={k}={v}" for k, v in env.items()]
    return podman("run", "--rm", "--network", "host", "--entrypoint", "lanes", *flags, image, *args)


@pytest.fixture
def containers(cpu_image: str, env: dict[str, str]) -> Iterator[dict[str, str]]:
    """The gateway and every CPU consumer group, each in its own container (host network:
    the test's broker and S3 server are on this machine's loopback)."""
    topics = cli(cpu_image, env, "kafka", "topics")  # as the chart's pre-install Job does
    assert "created" in topics.stdout, topics.stdout
    names: dict[str, str] = {}
    try:
        for component in ("gateway", *CPU_COMPONENTS):
            name = f"lanes-test-{component}-{uuid.uuid4().hex[:6]}"
            flags = [f"--env={k}={v}" for k, v in env.items()]
            flags.append(f"--env=LANES_METRICS_PORT={free_port()}")
            if component != "control":  # the control plane alone holds the signing key
                flags = [f for f in flags if not f.startswith("--env=LANES_CONTROL_SIGNING_KEY")]
            podman("run", "-d", "--name", name, "--network", "host", *flags, cpu_image, component)
            names[component] = name
        yield names
    finally:
        for name in names.values():
            podman("rm", "-f", "-t", "2", name, check=False)


def lanes_worker(env: dict[str, str], lane: str, state: Path) -> subprocess.Popen[bytes]:
    child = {**os.environ, **env, "LANES_STATE_DIR": str(state)}
    child["LANES_METRICS_PORT"] = str(free_port())
    child.pop("LANES_CONTROL_SIGNING_KEY")
    return subprocess.Popen(
        [sys.executable, "-m", "services.apps.cli", "run", "worker", "--lane", lane],
        env=child,
        stdout=subprocess.DEVNULL,
        stderr=open(state / f"worker-{lane}.log", "wb"),  # noqa: SIM115
    )


async def test_a_final_job_goes_through_the_components_in_containers(
    cpu_image: str,
    env: dict[str, str],
    containers: dict[str, str],
    tmp_path: Path,
    receiver: WebhookReceiver,
) -> None:
    workers = [lanes_worker(env, lane, tmp_path) for lane in ("final", "upscale")]
    try:
        # The CLI of the same image mints the tenant's key on the cluster.
        created = cli(cpu_image, env, "keys", "create", "--tenant", "acme")
        key = created.stdout.strip().splitlines()[-1]
        assert key.startswith("lanes_")
        gateway = env["LANES_PUBLIC_URL"]
        async with httpx.AsyncClient(base_url=gateway, timeout=10) as http:

            async def ready() -> bool:
                try:
                    return (await http.get("/readyz")).status_code == 200
                except httpx.HTTPError:
                    return False

            try:
                await wait_until(ready, timeout=120, what="the gateway container ready")
            except AssertionError:
                logs = {
                    n: podman("logs", c, check=False).stderr[-1500:] for n, c in containers.items()
                }
                raise AssertionError(f"gateway never ready; logs: {logs}") from None
            auth = {"Authorization": f"Bearer {key}"}
            resp = await http.post(
                "/v1/generations",
                json={"prompt": "a red bicycle", "intent": "final", "webhook_url": receiver.url},
                headers=auth,
            )
            assert resp.status_code == 202, resp.text
            job_id = resp.json()["job_id"]
            (delivery,) = await receiver.wait_for(1, timeout=300)
            payload = json.loads(delivery.body)
            assert payload["type"] == "generation.succeeded", payload
            data = payload["data"]
            assert data["job_id"] == job_id
            for artifact in data["artifacts"]:
                # Each URL is one the client can fetch: the gateway's, signed.
                assert artifact["uri"].startswith(gateway), artifact["uri"]
                image = await http.get(artifact["uri"])
                assert image.status_code == 200, artifact
            assert image.content.startswith(b"\x89PNG")
        # SIGTERM reaches the process through tini: each drains and stops by itself, well
        # before podman's 30 s kill (exit 137); uvicorn re-raises the signal after its
        # graceful shutdown (143).
        for component in ("gateway", "router", "jobs"):
            started = time.monotonic()
            podman("stop", "-t", "30", containers[component])
            assert time.monotonic() - started < 20, component
            state = podman("inspect", "--format", "{{.State.ExitCode}}", containers[component])
            assert state.stdout.strip() in ("0", "143"), (component, state.stdout)
        for name in containers.values():
            running = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            assert running in ("running", "exited"), name
    finally:
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        for proc in workers:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        await asyncio.sleep(0)


@pytest.mark.skipif(
    os.environ.get("LANES_GPU_IMAGE") != "1",
    reason="opt-in (LANES_GPU_IMAGE=1): the GPU image takes about 6 minutes and 7 GB to build",
)
def test_the_gpu_image_carries_torch_built_for_cuda() -> None:
    need_podman()
    out = subprocess.run(
        ["bash", "infra/images/build.sh", "--gpu-only"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    tag = out.stdout.split()[-1]
    probe = podman(
        "run", "--rm", "--network", "none", "--entrypoint", "python3", tag, "-c",
        "import torch, diffusers; print(torch.version.cuda or '')",
    )  # fmt: skip
    assert probe.stdout.strip(), "torch in the GPU image has no CUDA build"
