"""The gateway does what its OpenAPI document says: schemathesis, every check, against a
running gateway on the real broker (its consumers running, no GPU workers: jobs queue),
with a tenant's API key."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest

from services.config.settings import Settings
from tests.support import running_stack

pytestmark = pytest.mark.kafka


def _st() -> str:
    found = Path(sys.executable).with_name("st")
    return str(found) if found.exists() else shutil.which("st") or "st"


async def test_the_gateway_keeps_its_openapi_contract(settings: Settings, tmp_path: Path) -> None:
    # schemathesis also sends requests with the key left out or broken (its ignored_auth
    # check): allow it more failed attempts than a client would get.
    async with running_stack(settings, worker_lanes=[], auth_failure_burst=10_000) as stack:
        key = await stack.new_key("contract")
        base = f"http://127.0.0.1:{stack.settings.gateway.port}"
        proc = await asyncio.create_subprocess_exec(
            _st(),
            "--config-file",
            str(Path(__file__).with_name("schemathesis.toml")),
            "run",
            f"{base}/openapi.json",
            "--header",
            f"Authorization: Bearer {key}",
            "--checks",
            "all",
            # The OpenAI-compatible routes answer in OpenAI's shape and, with no workers
            # here, end every valid call in their documented 504: test_openai_images.py
            # drives them with the official SDK instead.
            "--exclude-path-regex",
            "^/v1/images/",
            "--max-examples",
            "8",
            "--seed",
            "20261201",
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--report-dir",
            str(tmp_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 600)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-8000:]
    assert "passed" in text.lower()
