"""A fleet of hosts on one machine: the broker, the object store, the gateway, the CPU
consumers, two lane-worker hosts and the client, each in a network namespace of its own
with its own address (tests/fleet/netns.py). Every component runs as `lanes ...` from the
project's environment, each with its own state directory (no shared disk). The client
submits to the gateway's address, gets its webhooks on its own address and downloads every
image through the URLs in them; then one worker host's link is cut while it renders."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.signing.control import generate_keypair
from services.storage.local_s3 import weed_binary
from tests.fleet.netns import Fleet

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

HOSTS = ["broker", "s3", "gateway", "cpu", "w1", "w2", "client"]
CPU = ("router", "jobs", "verifier", "webhooks", "control", "webhook-retries", "deferred")
# One lane: each worker host runs one `lanes run worker` (a process that imports torch and
# loads its model: on 2 cores, a lane more per host is most of a minute); a cascade's hop
# across hosts is test_object_storage's.
LANES = ("final",)
ROUTES = """\
models:
  tiny-sd: {tiny: {seed: 0}, version: tiny-v1}
lanes:
  final:
    model: tiny-sd
    max_concurrency: 2
    max_batch: 2
    max_wait_ms: 30
    sample_steps: 8
    guidance_scale: 5.0
    width: 256
    height: 256
intents: {preview: final, draft: final, final: final}
"""


SCRAPE = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())"


def wait_for_line(log: Path, text: str, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        time.sleep(0.3)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
    raise AssertionError(f"{what}: no {text!r} in {timeout}s\n{tail}")


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    if not weed_binary().is_file():
        pytest.skip("SeaweedFS not built (`make s3-server`)")
    f = Fleet(HOSTS)
    try:
        f.open()
        yield f
    finally:
        f.close()


def test_components_on_hosts_of_their_own_and_a_worker_host_cut_off(
    fleet: Fleet, tmp_path: Path
) -> None:
    a = fleet.address
    private, public = generate_keypair()
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES)
    py = [sys.executable, "-m", "services.apps.cli"]
    base = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LANES_")},
        "LANES_PROFILE": "production",
        "LANES_KAFKA_BOOTSTRAP": f"{a('broker')}:9092",
        "LANES_KAFKA_ALLOW_PLAINTEXT": "true",  # the test's private network
        "LANES_KAFKA_SESSION_TIMEOUT_MS": "6000",  # brokers' least: a cut host's jobs move soonest
        "LANES_ARTIFACTS": "s3://lanes/fleet",
        "LANES_S3_ENDPOINT_URL": f"http://{a('s3')}:8333",
        "LANES_S3_ACCESS_KEY_ID": "lanes-local",
        "LANES_S3_SECRET_ACCESS_KEY": "lanes-local-secret",
        "LANES_WEBHOOK_SECRET": "whsec_ZmxlZXQtdGVzdC13ZWJob29rLXNlY3JldA==",
        "LANES_OPS_KEY": "whsec_ZmxlZXQtdGVzdC1vcHMta2V5LXNlY3JldA==",
        "LANES_ARTIFACT_URL_KEY": "f" * 40,
        "LANES_CONTROL_VERIFY_KEYS": public,
        "LANES_ROUTES_FILE": str(routes),
        "LANES_GATEWAY_HOST": a("gateway"),
        "LANES_PUBLIC_URL": f"http://{a('gateway')}:8000",
        "LANES_WEBHOOK_ALLOWED_HOSTS": a("client"),
        "LANES_BATCH_CALIBRATION": "false",
        # The hosts' read-only model volume (the session's): no worker builds its own.
        "LANES_MODELS_DIR": os.environ["LANES_MODELS_DIR"],
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    ports = iter(range(9101, 9200))
    metrics_ports: dict[tuple[str, str], int] = {}

    def start(host: str, name: str, *args: str, stop_last: bool = False, **extra: str) -> None:
        """`lanes ARGS` on HOST: its own state directory, metrics on its own address."""
        state = tmp_path / "state" / host / name
        state.mkdir(parents=True)
        env = {**base, "LANES_STATE_DIR": str(state), "LANES_METRICS_HOST": a(host)}
        metrics_ports[host, name] = next(ports)
        env |= {"LANES_METRICS_PORT": str(metrics_ports[host, name]), **extra}
        fleet.run(host, [*py, *args], env, logs / f"{host}-{name}.log", stop_last=stop_last)

    t0 = time.monotonic()
    start(
        "broker", "kafka", "kafka", "start", "--host", a("broker"), "--port", "9092", stop_last=True
    )
    start("s3", "s3", "s3", "start", "--host", a("s3"), "--port", "8333", stop_last=True)
    wait_for_line(logs / "broker-kafka.log", "Kafka answering", 120, "the broker")
    wait_for_line(logs / "s3-s3.log", "S3 answering", 120, "the object store")
    admin = {**base, "LANES_STATE_DIR": str(tmp_path / "state" / "admin")}
    topics = fleet.exec("cpu", [*py, "kafka", "topics"], admin)
    assert topics.returncode == 0, topics.stderr
    minted = fleet.exec("cpu", [*py, "keys", "create", "--tenant", "acme"], admin)
    assert minted.returncode == 0, minted.stderr
    key = minted.stdout.strip().splitlines()[-1]

    start("gateway", "gateway", "run", "gateway")
    for name in CPU:
        extra = {"LANES_CONTROL_SIGNING_KEY": private} if name == "control" else {}
        start("cpu", name, "run", name, **extra)
    for host in ("w1", "w2"):
        for lane in LANES:
            start(host, f"worker-{lane}", "run", "worker", "--lane", lane,
                  "--instance", f"{host}-{lane}")  # fmt: skip
    for host in ("w1", "w2"):
        for lane in LANES:
            wait_for_line(logs / f"{host}-worker-{lane}.log", "partitions_assigned", 240,
                          f"{host}'s {lane} worker")  # fmt: skip

    def client(jobs: int, name: str) -> dict:
        out = tmp_path / f"{name}.json"
        proc = fleet.exec(
            "client",
            [
                sys.executable,
                "-m",
                "tests.fleet.client",
                "--gateway",
                base["LANES_PUBLIC_URL"],
                "--key",
                key,
                "--listen",
                f"{a('client')}:8080",
                "--jobs",
                str(jobs),
                "--out",
                str(out),
                "--timeout",
                "300",
            ],  # fmt: skip
            {**base, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
            timeout=420,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(out.read_text())

    # 1. One final job, end to end across the hosts.
    first = client(1, "first")
    ready_s = time.monotonic() - t0
    (job,) = first["jobs"].values()
    assert job["type"] == "generation.succeeded", job
    assert job["terminal_webhooks"] == 1
    assert job["webhook_from"] == a("cpu")  # the webhooks component's host
    assert [d["status"] for d in job["downloads"]] == [200]
    for download in job["downloads"]:
        assert download["png"] and download["uri"].startswith(base["LANES_PUBLIC_URL"])

    # Nothing listens on loopback where another host must reach it: every listener of a Lanes
    # process is on its host's own address. Allowed on loopback: the single broker's
    # controller (only the broker talks to it) and SeaweedFS's internal ports (its own
    # servers'); its S3 port is on the host's address.
    table = {host: fleet.listeners(host) for host in HOSTS}
    for host, listening in table.items():
        for local in listening:
            addr, port = local.rsplit(":", 1)
            addr = addr.strip("[]").removeprefix("::ffff:")
            if (host, addr, port) == ("broker", "127.0.0.1", "9093"):
                continue
            if host == "s3" and addr == "127.0.0.1":
                continue
            assert addr == a(host), f"{host} listens on {local}: {table}"
    assert f"{a('s3')}:8333" in table["s3"] and f"{a('gateway')}:8000" in table["gateway"]
    print("hosts:", json.dumps({h: {"address": a(h), "listening": table[h]} for h in HOSTS}))
    print("first job:", json.dumps(job), f"fleet ready and first job done in {ready_s:.1f}s")

    # 2. Cut w1's link while it renders: its jobs finish on w2, each with one terminal
    # webhook; then w1 comes back and rejoins its groups.
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(client(6, "cut")))
    runner.start()
    w1_metrics = f"http://{a('w1')}:{metrics_ports['w1', 'worker-final']}/metrics"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        scraped = fleet.exec("w1", [sys.executable, "-c", SCRAPE, w1_metrics], timeout=10).stdout
        held = [
            float(line.rsplit(" ", 1)[1])
            for line in scraped.splitlines()
            if line.startswith("lanes_worker_in_flight{")
        ]
        if sum(held) > 0:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("w1 never held a job")
    fleet.cut("w1")
    cut_at = time.monotonic()
    runner.join(timeout=600)
    assert result, "the client did not finish"
    jobs = result["jobs"]
    assert set(jobs) == set(result["submitted"]), "a job never reached a terminal webhook"
    for job_id, job in jobs.items():
        assert job["type"] == "generation.succeeded", (job_id, job)
        assert job["terminal_webhooks"] == 1, (job_id, job)
        assert all(d["status"] == 200 and d["png"] for d in job["downloads"]), job
    rendered_by = {d["instance"] for job in jobs.values() for d in job["downloads"]}
    print("cut-off round:", json.dumps({"rendered_by": sorted(rendered_by),
          "seconds": sorted(j["seconds"] for j in jobs.values())}))  # fmt: skip
    assert not any(i.startswith("w1-") for i in rendered_by), rendered_by  # w1 had no network
    cut_s = time.monotonic() - cut_at

    # 3. w1 comes back: its workers rejoin their groups and serve again.
    before = {lane: log_count(logs / f"w1-worker-{lane}.log", "partitions_assigned")
              for lane in LANES}  # fmt: skip
    fleet.cut("w1", up=True)
    for lane in LANES:
        wait_until_count(logs / f"w1-worker-{lane}.log", "partitions_assigned", before[lane] + 1,
                         120, f"w1's {lane} worker rejoining")  # fmt: skip
    again = client(4, "again")
    assert len(again["jobs"]) == 4
    assert all(j["terminal_webhooks"] == 1 for j in again["jobs"].values())
    after = {d["instance"] for j in again["jobs"].values() for d in j["downloads"]}
    print("after rejoin:", json.dumps({"rendered_by": sorted(after), "cut_round_s": cut_s}))
    for host in ("w1", "w2"):  # every worker process lived through it
        for lane in LANES:
            log = (logs / f"{host}-worker-{lane}.log").read_text(errors="replace")
            assert "Traceback" not in log, log[-3000:]


def log_count(log: Path, text: str) -> int:
    return log.read_text(errors="replace").count(text)


def wait_until_count(log: Path, text: str, count: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log_count(log, text) >= count:
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n{log.read_text()[-3000:]}")
