"""Podman for the tests, through the project's own scripts: the private configuration of
infra/images/podman-env.sh and the images `make image` builds."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "infra" / "images" / "build.sh"


def podman_env() -> dict[str, str]:
    """The environment with podman-env.sh's CONTAINERS_* variables."""
    out = subprocess.run(
        ["bash", "-c", f"source {ROOT / 'infra/images/podman-env.sh'} && env -0"],
        capture_output=True,
        check=True,
    ).stdout
    return dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)


def need_podman() -> None:
    for tool in ("podman", "mmdebstrap"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (`make container-tools`)")
    if os.geteuid() != 0:
        pytest.skip("the image tests run podman as root")


def build_cpu_image() -> str:
    """`make image` (the CPU target): returns the tag it built."""
    out = subprocess.run(
        ["bash", str(BUILD), "--cpu-only"], capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout.split()[-1]


def podman(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        ["podman", *args], capture_output=True, text=True, env=podman_env(), timeout=timeout
    )
    if check:
        assert out.returncode == 0, f"podman {' '.join(args[:3])}: {out.stderr[-2000:]}"
    return out
