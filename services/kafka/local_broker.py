"""Run a real Apache Kafka broker (KRaft, loopback) as a local Java process: one node, or
a cluster of several (``KafkaCluster``: replication 3, min.insync.replicas 2).

The jars come from Maven Central through ``infra/kafka/pom.xml``; no Docker, no tarball.
Used by ``lanes up`` / ``lanes kafka start`` and by the test suite's session fixture.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from producers.settings import parse_bootstrap
from services.kafka.local_security import LocalSecurity
from services.process.ports import free_port, port_open

__all__ = [
    "INFRA_KAFKA",
    "jar_cache",
    "ensure_jars",
    "ensure_class_archive",
    "KafkaProcess",
    "KafkaCluster",
    "free_port",
    "port_open",
    "local_kafka",
]

INFRA_KAFKA = Path(__file__).resolve().parents[2] / "infra" / "kafka"


def jar_cache(infra: Path = INFRA_KAFKA) -> Path:
    """Where the jars live: outside the clone, keyed by the pom's content (Kafka version and
    dependencies) under ``~/.cache/lanes``, so a fresh clone reuses them and a version bump
    fetches anew."""
    digest = hashlib.sha256((infra / "pom.xml").read_bytes()).hexdigest()[:12]
    return Path.home() / ".cache" / "lanes" / f"kafka-jars-{digest}"


def ensure_jars(infra: Path = INFRA_KAFKA) -> Path:
    """Copy Kafka's jars into the cache (``jar_cache``) with Maven unless they are there."""
    libs = jar_cache(infra)
    if libs.is_dir() and any(libs.glob("kafka_2.13-*.jar")):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("Maven (mvn) is needed to fetch Apache Kafka's jars from Maven Central")
    tmp = libs.with_name(libs.name + ".partial")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(infra / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}",
        ],
        check=True,
    )
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    return libs


def class_archive(libs: Path, java: str) -> Path:
    """Where the JVM's class-data-sharing archive of Kafka's classes lives: beside the jars
    (so keyed by them), and by the JVM build (an archive only fits the JVM that wrote it)."""
    jvm = Path(java).resolve()
    stamp = hashlib.sha256(f"{jvm}:{jvm.stat().st_mtime_ns}".encode()).hexdigest()[:12]
    return libs / f"classes-{stamp}.jsa"


def ensure_class_archive(infra: Path = INFRA_KAFKA) -> Path | None:
    """Write the class archive now unless it is there (``make install`` does, once a machine):
    a throwaway node on loopback, started and stopped cleanly, ~10 s. Without it, the first
    node to exit cleanly writes it; in a test session that is the session's broker, at its
    end. None when it could not (the nodes start without one, as before)."""
    import tempfile

    libs = ensure_jars(infra)
    java = shutil.which("java")
    if java is None:
        return None
    archive = class_archive(libs, java)
    if archive.exists():
        return archive
    with tempfile.TemporaryDirectory(prefix="lanes-kafka-classes-") as work:
        node = KafkaProcess(Path(work), port=free_port(), infra=infra)
        try:
            node.start(timeout_s=90)
        except (OSError, RuntimeError, TimeoutError, subprocess.SubprocessError):
            pass
        finally:
            node.stop()
    return archive if archive.exists() else None


@dataclass
class KafkaProcess:
    """One broker+controller node. ``start()`` returns once it answers on ``port``."""

    state_dir: Path
    port: int = 9092
    controller_port: int = 0
    heap: str = "512m"
    infra: Path = INFRA_KAFKA
    node_id: int = 1
    voters: str | None = None  # the cluster's controller.quorum.voters; None: this node alone
    replication: int = 1
    min_isr: int = 1
    cluster_id: str | None = None  # shared by a cluster's nodes; None: a new one
    # SASL_SSL, mTLS controllers and ACLs (see local_security); None: PLAINTEXT.
    security: LocalSecurity | None = None
    # The address it listens on and advertises: loopback for one machine; a host's own
    # address when other hosts connect (`lanes kafka start --host`). A single node's
    # controller listener stays on loopback: only the node itself talks to it.
    host: str = "127.0.0.1"
    # Compile a method only after this many times the usual calls (see ``start``). A
    # benchmark's throwaway broker passes 1: it stands for a long-running broker, whose
    # request path is compiled.
    compile_threshold_scaling: float = 5.0
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    # The archive this node writes when it exits cleanly (the first node on a machine).
    _archive_out: tuple[Path, Path] | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "kafka.log"

    def _java(self) -> str:
        java = shutil.which("java")
        if java is None:
            raise RuntimeError("Java 17+ is needed to run the local Kafka broker")
        return java

    def _config(self) -> Path:
        if not self.controller_port:
            self.controller_port = free_port()
        data = self.state_dir / "data"
        text = (
            (self.infra / "server.properties")
            .read_text()
            .format(
                port=self.port,
                host=self.host,
                controller_port=self.controller_port,
                log_dir=data,
                node_id=self.node_id,
                voters=self.voters or f"{self.node_id}@127.0.0.1:{self.controller_port}",
                replication=self.replication,
                min_isr=self.min_isr,
            )
        )
        if self.security is not None:
            text += "\n" + self.security.broker_properties(self.port, self.controller_port)
        cfg = self.state_dir / "server.properties"
        cfg.write_text(text)
        return cfg

    def start(self, timeout_s: float = 90.0) -> None:
        self.launch()
        self.wait_open(timeout_s)

    def launch(self) -> None:
        """Start the JVM (formatting the log dir the first time); ``wait_open`` waits."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        libs = ensure_jars(self.infra)
        java = self._java()
        cfg = self._config()
        classpath = f"{libs}/*"
        log = self.log_path.open("ab")
        if not (self.state_dir / "data" / "meta.properties").exists():
            subprocess.run(
                [
                    java,
                    "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
                    "-cp",
                    classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    self.cluster_id or uuid.uuid4().hex[:22],
                    "-c",
                    str(cfg),
                    "--ignore-formatted",
                    *(self.security.scram_args() if self.security is not None else []),
                ],
                check=True,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.proc = subprocess.Popen(
            [
                java,
                f"-Xmx{self.heap}",
                "-Xms128m",
                "-XX:+UseG1GC",
                # Compile a method only after 5x the usual calls: a local node spends most of
                # its first minutes' CPU in the JIT compilers (C1 + C2: ~55% of an idle node's
                # CPU), on code that never gets hot. A 3-node cluster opens on ~7 s of CPU
                # rather than ~10, idles on 30% less, with the same acks=all publish latency
                # once warm. (C1 only halves it but slows every publish ~10x: tried,
                # reverted.) Warm takes 5x longer too: after 2,000 round trips a produce
                # still spent 1.2 ms in the broker (0.7 ms at the default), a hop 3.5 ms
                # (2.5): the benchmarks' brokers compile at the usual thresholds.
                f"-XX:CompileThresholdScaling={self.compile_threshold_scaling:g}",
                *self._class_sharing(libs, java),
                "-Djava.awt.headless=true",
                "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
                "-Dorg.slf4j.simpleLogger.log.kafka.server.KafkaRaftServer=info",
                "-cp",
                classpath,
                "kafka.Kafka",
                str(cfg),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _class_sharing(self, libs: Path, java: str) -> list[str]:
        """JVM flags that load Kafka's classes from a shared archive (one node opens in
        ~3.4 s on ~3 s of CPU rather than ~8 s on ~8.5 s, two cores), or, while there is
        none, have this node write one when it exits cleanly (``_keep_archive``): one node
        at a time, the one that claims the partial file."""
        quiet = ["-Xlog:cds=off", "-Xlog:cds+dynamic=off"]
        archive = class_archive(libs, java)
        if archive.exists():
            return [f"-XX:SharedArchiveFile={archive}", *quiet]
        partial = archive.with_name(archive.name + ".partial")
        with contextlib.suppress(FileNotFoundError):
            if time.time() - partial.stat().st_mtime > 3600:  # its writer died
                partial.unlink()
        try:
            os.close(os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            return []  # another node is writing it
        self._archive_out = (partial, archive)
        return [f"-XX:ArchiveClassesAtExit={partial}", *quiet]

    def _keep_archive(self, returncode: int | None) -> None:
        """After the JVM exited: an archive written at a clean exit (not a kill -9) becomes
        the shared one, unless another node's got there first; a partial one goes."""
        if self._archive_out is None:
            return
        partial, archive = self._archive_out
        self._archive_out = None
        written = partial.exists() and partial.stat().st_size > 0
        if returncode is not None and returncode >= 0 and written and not archive.exists():
            os.replace(partial, archive)
        partial.unlink(missing_ok=True)

    def wait_open(self, timeout_s: float = 90.0) -> None:
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Kafka exited with {self.proc.returncode}:\n{self.tail()}")
            if port_open(self.host, self.port):
                return
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"Kafka did not open port {self.port} in {timeout_s}s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9: no flush, no controlled shutdown (the log dir stays, for ``start``)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self._keep_archive(None)

    def terminate(self) -> None:
        """SIGTERM (a controlled shutdown); ``wait_stopped`` waits for it."""
        if self.running:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    def wait_stopped(self, timeout_s: float) -> None:
        """Wait for the JVM to exit; kill -9 it after ``timeout_s``."""
        if self.proc is None:
            return
        try:
            self._keep_archive(self.proc.wait(max(0.1, timeout_s)))
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None

    def stop(self, timeout_s: float = 30.0) -> None:
        self.terminate()
        self.wait_stopped(timeout_s)


@dataclass
class KafkaCluster:
    """``size`` broker+controller nodes on loopback, one log dir each under ``state_dir``:
    replication ``min(3, size)``, min.insync.replicas one less (2 for 3 nodes)."""

    state_dir: Path
    size: int = 3
    base_port: int = 0  # node i answers on base_port + 2i (controller + 1); 0: free ports
    heap: str = "384m"
    security: LocalSecurity | None = None
    nodes: list[KafkaProcess] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        ports = (
            [(self.base_port + 2 * i, self.base_port + 2 * i + 1) for i in range(self.size)]
            if self.base_port
            else [(free_port(), free_port()) for _ in range(self.size)]
        )
        voters = ",".join(f"{i + 1}@127.0.0.1:{c}" for i, (_, c) in enumerate(ports))
        replication = min(3, self.size)
        cluster_id = uuid.uuid4().hex[:22]
        self.nodes = [
            KafkaProcess(
                self.state_dir / f"node-{i + 1}",
                port=port,
                controller_port=controller,
                heap=self.heap,
                node_id=i + 1,
                voters=voters,
                replication=replication,
                min_isr=max(1, replication - 1),
                cluster_id=cluster_id,
                security=self.security,
            )
            for i, (port, controller) in enumerate(ports)
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def replication(self) -> int:
        return self.nodes[0].replication

    @property
    def min_isr(self) -> int:
        return self.nodes[0].min_isr

    def node(self, node_id: int) -> KafkaProcess:
        return self.nodes[node_id - 1]

    def start(self, timeout_s: float = 120.0) -> None:
        """Start every node at once (the controllers need a quorum to elect a leader)."""
        for node in self.nodes:
            node.launch()
        try:
            for node in self.nodes:
                node.wait_open(timeout_s)
        except Exception:
            self.stop()
            raise

    def tail(self, lines: int = 20) -> str:
        return "\n".join(f"--- node {n.node_id}\n{n.tail(lines)}" for n in self.nodes)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM every node at once (one at a time, the last would wait for a controller
        quorum that is gone), then kill -9 what is still running after ``timeout_s``."""
        for node in self.nodes:
            node.terminate()
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            node.wait_stopped(deadline - time.monotonic())


@contextlib.contextmanager
def local_kafka(settings: Any, workdir: Path) -> Iterator[str]:
    """The configured cluster if it answers (or LANES_KAFKA_BOOTSTRAP is set), else a
    throwaway local broker in ``workdir`` for the duration of the block, compiling its hot
    paths as a long-running broker has (the benchmarks measure latency on it)."""
    answers = any(port_open(h, p) for h, p in parse_bootstrap(settings.kafka_bootstrap))
    if os.environ.get("LANES_KAFKA_BOOTSTRAP") or answers:
        yield settings.kafka_bootstrap
        return
    kafka = KafkaProcess(workdir / "kafka", port=free_port(), compile_threshold_scaling=1)
    kafka.start()
    try:
        yield kafka.bootstrap
    finally:
        kafka.stop()
