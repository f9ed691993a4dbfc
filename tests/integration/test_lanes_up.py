"""`lanes up` itself, as users run it (a subprocess), against the cluster that `lanes kafka
start --brokers 3 --secure` brings up, with exactly the variables it prints: a bootstrap
list of three addresses, replication 3, SASL_SSL with each component its own principal
under ACLs. A job goes through it."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from services.process.ports import free_port

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _lanes(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.apps.cli", *args],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _free_base(count: int) -> int:
    """A port with the ``count`` ports from it free (a cluster takes port, port+1, ...)."""
    import socket

    for _ in range(50):
        base = free_port()
        try:
            socks = []
            for p in range(base, base + count):
                sock = socket.socket()
                sock.bind(("127.0.0.1", p))
                socks.append(sock)
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return base
    raise RuntimeError(f"no {count} free ports in a row")


def _stop(proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def kafka_started(tmp: Path, *args: str) -> Iterator[dict[str, str]]:
    """`lanes kafka start ARGS`; yields the variables its `export` line prints."""
    env = dict(os.environ, LANES_STATE_DIR=str(tmp / "kafka-home"), PYTHONUNBUFFERED="1")
    env.pop("LANES_KAFKA_BOOTSTRAP", None)
    log = tmp / "kafka-start.log"
    proc = _lanes("kafka", "start", "--port", str(_free_base(6)), *args, env=env, log=log)
    try:
        deadline = time.monotonic() + 180
        exported: dict[str, str] = {}
        while not exported:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            for line in log.read_text(errors="replace").splitlines():
                if line.strip().startswith("export "):
                    words = shlex.split(line.strip()[len("export ") :])
                    exported = dict(w.split("=", 1) for w in words)
            time.sleep(0.5)
        yield exported
    finally:
        _stop(proc)


def job_through_lanes_up(tmp: Path, exported: dict[str, str]) -> dict[str, object]:
    """`lanes up` with the printed variables; a draft job from submit to succeeded."""
    port = free_port()
    env = dict(os.environ, **exported)
    env.update(LANES_STATE_DIR=str(tmp / "stack"), LANES_GATEWAY_PORT=str(port))
    # The start-up batch profile (16 s of the first lane's start here) has its own test
    # (test_lane_workers); this one is about the cluster and the principals.
    env.setdefault("LANES_BATCH_CALIBRATION", "false")
    log = tmp / "lanes-up.log"
    up = _lanes("up", env=env, log=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        key_file = tmp / "stack" / "credentials" / "api-key"
        while True:
            assert up.poll() is None, log.read_text(errors="replace")[-4000:]
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-4000:]
            try:
                if key_file.exists() and httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        auth = {"Authorization": f"Bearer {key_file.read_text().strip()}"}
        with httpx.Client(base_url=base, headers=auth, timeout=30) as http:
            resp = http.post("/v1/generations", json={"prompt": 'a sign "UP"', "intent": "draft"})
            assert resp.status_code == 202, resp.text
            job_id = resp.json()["job_id"]
            while True:
                job = http.get(f"/v1/generations/{job_id}").json()
                if job["status"] in ("succeeded", "failed", "canceled"):
                    return dict(job)
                assert time.monotonic() < deadline, log.read_text(errors="replace")[-4000:]
                time.sleep(0.5)
    finally:
        _stop(up, timeout=90)


# `lanes up` starts a dozen processes (five workers load torch) on two cores: minutes. One
# cluster that is both (three brokers, SASL_SSL with ACLs) covers what users start: the
# bootstrap list, replication 3, and a principal per component.
@pytest.mark.timeout(480)
def test_lanes_up_on_a_secured_three_broker_cluster_each_component_its_own_principal(
    tmp_path: Path,
) -> None:
    with kafka_started(tmp_path, "--brokers", "3", "--secure") as exported:
        assert exported["LANES_KAFKA_BOOTSTRAP"].count(",") == 2  # three addresses
        assert exported["LANES_TOPIC_REPLICATION_FACTOR"] == "3"
        assert exported["LANES_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        job = job_through_lanes_up(tmp_path, exported)
        log = (tmp_path / "lanes-up.log").read_text(errors="replace")
    assert job["status"] == "succeeded", job
    assert "kafka_acls_applied" in log
    assert exported["LANES_KAFKA_PASSWORD"] not in log  # no secret in any component's log
    timings = job["timings"]
    assert isinstance(timings, dict)
    print(f"secured 3-broker lanes up: draft job total {timings['total_ms']} ms")
