"""Jaeger (v2, an OpenTelemetry Collector distribution) as a local trace backend: built from
its Go module into ~/.cache/lanes (`make jaeger`), run with in-memory storage, an OTLP/HTTP
receiver and the query API on loopback ports of its own. For the tests and, on request,
`make up` (LANES_JAEGER=1)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = ["JAEGER_VERSION", "jaeger_binary", "ensure_jaeger", "JaegerProcess"]

JAEGER_VERSION = "v1.76.0"
_CONFIG = """\
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_query:
    # No spans of its own: it would send them to localhost:4317, where nothing listens,
    # and on exit wait 10 s for that export to time out.
    enable_tracing: false
    storage:
      traces: memory
    http:
      endpoint: "{host}:{query_port}"
    grpc:
      endpoint: "{host}:{query_grpc_port}"
  jaeger_storage:
    backends:
      memory:
        memory:
          max_traces: 100000
receivers:
  otlp:
    protocols:
      http:
        endpoint: "{host}:{otlp_port}"
processors:
  batch:
    timeout: 200ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memory
"""


def jaeger_binary() -> Path:
    return Path.home() / ".cache" / "lanes" / f"jaeger-{JAEGER_VERSION}" / "jaeger"


def ensure_jaeger() -> Path:
    """The cached binary, built from the Go module proxy when missing (Jaeger's module has a
    replace directive, so `go install` refuses it: `go get -tool` in a scratch module)."""
    binary = jaeger_binary()
    if binary.is_file():
        return binary
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("Go is needed to build Jaeger (the local trace backend)")
    scratch = binary.parent / "module"
    scratch.mkdir(parents=True, exist_ok=True)
    if not (scratch / "go.mod").exists():
        subprocess.run([go, "mod", "init", "lanes-jaeger"], check=True, cwd=scratch)
    package = "github.com/jaegertracing/jaeger/cmd/jaeger"
    subprocess.run([go, "get", "-tool", f"{package}@{JAEGER_VERSION}"], check=True, cwd=scratch)
    partial = binary.with_name("jaeger.partial")
    build = [go, "build", "-trimpath", "-ldflags=-s -w", "-o", str(partial), package]
    subprocess.run(build, check=True, cwd=scratch)  # -s -w: a shorter link, no debug info
    partial.rename(binary)
    return binary


@dataclass
class JaegerProcess:
    state_dir: Path
    otlp_port: int
    query_port: int
    query_grpc_port: int
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def otlp_endpoint(self) -> str:
        """What OTEL_EXPORTER_OTLP_ENDPOINT takes (the SDK appends /v1/traces)."""
        return f"http://{self.host}:{self.otlp_port}"

    @property
    def query_url(self) -> str:
        return f"http://{self.host}:{self.query_port}"

    def start(self, timeout_s: float = 60.0) -> None:
        binary = ensure_jaeger()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        config = self.state_dir / "jaeger.yaml"
        config.write_text(
            _CONFIG.format(
                host=self.host,
                otlp_port=self.otlp_port,
                query_port=self.query_port,
                query_grpc_port=self.query_grpc_port,
            )
        )
        log = (self.state_dir / "jaeger.log").open("ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        self.proc = subprocess.Popen(
            [str(binary), f"--config=file:{config}"], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Jaeger exited:\n{self.tail()}")
            try:
                if httpx.get(f"{self.query_url}/api/services", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"Jaeger did not answer in {timeout_s}s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        path = self.state_dir / "jaeger.log"
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.exists()
            else ""
        )

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        """The trace as Jaeger's query API returns it (spans, processes); None if unknown."""
        resp = httpx.get(f"{self.query_url}/api/traces/{trace_id}", timeout=5)
        if resp.status_code != 200:
            return None
        data = resp.json().get("data") or []
        return data[0] if data else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
