"""Hosts on one machine: Linux network namespaces, each with its own address, joined by
veth pairs to a bridge that lives in a namespace of its own. Nothing is added to the
machine's own namespace; ``close()`` removes every namespace (and with them the links)."""

from __future__ import annotations

import os
import random
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class Fleet:
    hosts: list[str]
    tag: str = field(default_factory=lambda: f"ln{os.getpid() % 100000}")
    subnet: str = field(
        default_factory=lambda: f"10.{random.randint(200, 250)}.{random.randint(1, 254)}"
    )
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    stop_last: list[subprocess.Popen[bytes]] = field(default_factory=list)
    made: list[str] = field(default_factory=list)

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def address(self, host: str) -> str:
        return f"{self.subnet}.{self.hosts.index(host) + 2}"

    def link(self, host: str) -> str:
        """The host's port on the bridge (in the switch's namespace)."""
        return f"p-{self.hosts.index(host)}"

    @property
    def switch(self) -> str:
        return f"{self.tag}-sw"

    def open(self) -> None:
        ip("netns", "add", self.switch)
        self.made.append(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        for host in self.hosts:
            ns = self.ns(host)
            ip("netns", "add", ns)
            self.made.append(ns)
            port = self.link(host)
            ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0",
               "netns", ns)  # fmt: skip
            ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")

    def cut(self, host: str, up: bool = False) -> None:
        """Set the host's link down (its cable pulled), or up again."""
        ip("-n", self.switch, "link", "set", self.link(host), "up" if up else "down")

    def run(
        self, host: str, cmd: list[str], env: dict[str, str], log: Path, stop_last: bool = False
    ) -> subprocess.Popen[bytes]:
        out: IO[bytes] = log.open("ab")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(host), *cmd], env=env, stdout=out, stderr=out
        )
        self.procs.append(proc)
        if stop_last:
            self.stop_last.append(proc)
        return proc

    def exec(
        self, host: str, cmd: list[str], env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(host), *cmd],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def listeners(self, host: str) -> list[str]:
        """Local addresses of the host's listening TCP sockets."""
        out = self.exec(host, ["ss", "-ltnH"]).stdout
        return [line.split()[3] for line in out.splitlines() if line.strip()]

    def close(self) -> None:
        """Stop the components, then (once they are gone) the services they need (started
        with ``stop_last``: the broker and the object store; components draining without a
        broker wait out their timeouts), then remove the namespaces."""
        waves = [[p for p in self.procs if p not in self.stop_last], self.stop_last]
        for wave in waves:
            for proc in wave:
                if proc.poll() is None:
                    proc.terminate()
            for proc in wave:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.made.clear()
