"""`pip install lanes` is the SDK: it must import without the server, ML or web stack."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import requires

HEAVY = ("torch", "diffusers", "transformers", "fastapi", "uvicorn", "rapidocr")


def test_the_base_requirements_carry_no_server_or_ml_package() -> None:
    base = [r for r in requires("lanes") or [] if "extra ==" not in r]
    assert base and not [r for r in base if r.split(">")[0].split("<")[0] in HEAVY], base


def test_the_sdk_imports_with_the_heavy_stack_and_the_server_missing() -> None:
    blocked = [*HEAVY, "services", "consumers", "structlog", "prometheus_client"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "from producers.client import GenerationClient\n"
        "from producers.ops import sign_command, verify_command\n"
        "from producers.settings import ClientSettings\n"
        "from producers.webhook_receiver import verify_delivery\n"
        "import asyncio\n"
        "async def main():\n"
        "    GenerationClient(ClientSettings(kafka_bootstrap='127.0.0.1:1'))\n"
        "asyncio.run(main())\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
