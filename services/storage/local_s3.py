"""A real S3 server on this machine without Docker: SeaweedFS, built from its Go module.

``ensure_weed()`` builds the ``weed`` binary once into ``~/.cache/lanes/seaweedfs-<rev>/``
(outside the clone, keyed by the module version: a fresh clone reuses it, a new machine
builds it, about 6 minutes on 2 cores). Plain ``go install`` refuses the module's replace
directives, so it downloads the module and builds ``./weed`` inside it.
``WeedProcess`` runs ``weed mini`` (master, volume, filer and S3 in one process) on
loopback, every port its own, and creates the bucket. Used by the tests and, opt-in, by
`lanes s3 start` for `make up` with ``LANES_ARTIFACTS=s3://...``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.process.ports import free_port, port_open

__all__ = ["WEED_MODULE", "WEED_VERSION", "weed_binary", "ensure_weed", "WeedProcess"]

WEED_MODULE = "github.com/seaweedfs/seaweedfs"
WEED_VERSION = "v0.0.0-20261109003541-7506e5f91cd6"  # SeaweedFS 4.53


def weed_binary() -> Path:
    return Path.home() / ".cache" / "lanes" / f"seaweedfs-{WEED_VERSION[-12:]}" / "weed"


def ensure_weed() -> Path:
    """The cached ``weed`` binary, built from the Go module proxy when missing."""
    binary = weed_binary()
    if binary.is_file():
        return binary
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("Go is needed to build SeaweedFS (the local S3 server)")
    info = json.loads(
        subprocess.run(
            [go, "mod", "download", "-json", f"{WEED_MODULE}@{WEED_VERSION}"],
            check=True,
            capture_output=True,
            text=True,
            cwd=Path.home(),
        ).stdout
    )
    partial = binary.with_name("weed.partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    # No symbol table or DWARF (-s -w): a shorter link, a smaller binary; nothing debugs it.
    build = [go, "build", "-trimpath", "-ldflags=-s -w", "-o", str(partial), "./weed"]
    subprocess.run(build, check=True, cwd=info["Dir"])
    partial.rename(binary)
    return binary


@dataclass
class WeedProcess:
    """``weed mini`` on 127.0.0.1; ``start()`` returns once S3 answers and the bucket exists."""

    state_dir: Path
    bucket: str = "lanes"
    s3_port: int = 0
    # The admin identity weed mini creates at start (it reads them from AWS_* variables).
    access_key: str = "lanes-local"
    secret_key: str = "lanes-local-secret"
    random_ports: bool = True
    host: str = "127.0.0.1"  # the address it serves on (`lanes s3 start --host`)
    ports: dict[str, int] = field(default_factory=dict, init=False)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "weed.log"

    def start(self, timeout_s: float = 90.0) -> None:
        binary = ensure_weed()
        data = self.state_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.s3_port = self.s3_port or free_port()
        # Tests: every port its own, so servers never collide. A long-lived server
        # (`lanes s3 start`, data kept in state_dir) keeps SeaweedFS's default ports: its
        # master remembers where its volumes live. The Iceberg and Lance catalogs are off.
        names = (
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "debug.port",
            "s3.port.grpc",
        )
        # A restart (the same server back after an outage) keeps the ports it had.
        ports = self.ports or ({name: free_port() for name in names} if self.random_ports else {})
        self.ports = ports
        args = [
            str(binary),
            "mini",
            f"-dir={data}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-s3.port={self.s3_port}",
            f"-bucket={self.bucket}",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-s3.port.iceberg=0",  # the Iceberg and Lance catalogs: off
            "-s3.port.lance=0",
            *(f"-{name}={port}" for name, port in ports.items()),
        ]
        log = self.log_path.open("ab")
        env = dict(
            os.environ, AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key
        )
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout_s
        while not (port_open(self.host, self.s3_port) and self._bucket_ready()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"SeaweedFS did not start:\n{self.tail()}")
            time.sleep(0.3)

    def _bucket_ready(self) -> bool:
        """Create the bucket (idempotent); False while the filer is still coming up."""
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )
        try:
            client.head_bucket(Bucket=self.bucket)
            return True
        except (ClientError, BotoCoreError):
            pass
        try:
            client.create_bucket(Bucket=self.bucket)
            return True
        except ClientError as exc:
            return exc.response.get("Error", {}).get("Code") in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            )
        except BotoCoreError:
            return False

    def tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
