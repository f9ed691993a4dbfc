"""Component processes for the benchmarks: start one as `lanes run ...` would on a host,
wait for its /readyz, read its RSS, stop it or kill -9 it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from services.apps.registry import child_env
from services.config.settings import Settings
from services.process.ports import free_port

__all__ = ["Proc", "start_proc", "wait_ready"]


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    port: int
    started: float

    def rss_mb(self) -> float:
        proc = psutil.Process(self.popen.pid)
        rss = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
        return float(rss) / 2**20

    def kill(self) -> None:
        """kill -9: no drain, no flush."""
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start_proc(
    settings: Settings, argv: list[str], log: Path, port: int | None = None, **env: str
) -> Proc:
    """``argv`` in a process of its own with the settings' environment (child_env), its
    gateway and /metrics port ``port`` (default: a free one), output appended to ``log``."""
    port = port or free_port()
    overrides = {
        "LANES_LOG_LEVEL": "WARNING",
        "LANES_GATEWAY_PORT": str(port),
        "LANES_METRICS_PORT": str(port),
        **env,  # (may raise the log level: a bench that reads a process's own account)
    }
    environ = child_env(settings, os.environ, **overrides)
    with log.open("ab") as out:
        popen = subprocess.Popen(argv, env=environ, stdout=out, stderr=subprocess.STDOUT)
    return Proc(popen, port, time.perf_counter())


async def wait_ready(proc: Proc, timeout_s: float = 900) -> float:
    """Seconds from the process's start until its /readyz answers 200."""
    async with httpx.AsyncClient(timeout=2) as http:
        while time.perf_counter() - proc.started < timeout_s:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"the process exited with {proc.popen.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"http://127.0.0.1:{proc.port}/readyz")).status_code == 200:
                    return time.perf_counter() - proc.started
            await asyncio.sleep(0.05)
    raise TimeoutError(f"not ready within {timeout_s}s")
