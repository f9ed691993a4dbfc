"""What both contract servers share: behaviour switches, call log, images, serving."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from PIL import Image, ImageDraw, ImageFont

_QUOTED = re.compile(r"[\"\u201c\u201d]([^\"\u201c\u201d]+)[\"\u201c\u201d]")


@dataclass
class Behaviour:
    api_key: str
    down: bool = False
    throttle: int = 0  # the next N calls are throttled
    retry_s: float = 1.0
    delay_s: float = 0.0
    retired: set[str] = field(default_factory=set)
    in_flight: int = 0
    max_in_flight_seen: int = 0
    calls: list[dict[str, Any]] = field(default_factory=list)
    cues_seen: dict[str, int] = field(default_factory=dict)  # (cue, prompt) -> times

    def once(self, cue: str, prompt: str) -> bool:
        """True the first time this prompt carries ``cue`` (a 429 or 500 once, then fine)."""
        if cue not in prompt:
            return False
        key = f"{cue}|{prompt}"
        self.cues_seen[key] = self.cues_seen.get(key, 0) + 1
        return self.cues_seen[key] == 1

    def take_throttle(self) -> bool:
        if self.throttle > 0:
            self.throttle -= 1
            return True
        return False


def add_control(app: FastAPI, behaviour: Behaviour) -> None:
    @app.post("/_contract")
    async def control(request: Request) -> dict[str, Any]:
        body = await request.json()
        for name in ("down", "throttle", "retry_s", "delay_s"):
            if name in body:
                setattr(behaviour, name, body[name])
        if "retired" in body:
            behaviour.retired = set(body["retired"])
        return {"calls": len(behaviour.calls), "max_in_flight": behaviour.max_in_flight_seen}

    @app.get("/_contract/calls")
    async def calls() -> list[dict[str, Any]]:
        return behaviour.calls


@contextlib.asynccontextmanager
async def rendering(behaviour: Behaviour) -> AsyncIterator[None]:
    behaviour.in_flight += 1
    behaviour.max_in_flight_seen = max(behaviour.max_in_flight_seen, behaviour.in_flight)
    try:
        if behaviour.delay_s:
            await asyncio.sleep(behaviour.delay_s)
        yield
    finally:
        behaviour.in_flight -= 1


def picture(prompt: str, width: int, height: int, seed: int = 0) -> bytes:
    """A PNG at the provider's size: a flat colour from the seed, the quoted text on it."""
    rng = (seed * 2654435761) % 2**32
    colour = (200 + rng % 56, 200 + (rng >> 8) % 56, 200 + (rng >> 16) % 56)
    image = Image.new("RGB", (width, height), colour)
    found = _QUOTED.findall(prompt)
    if found:
        text = " ".join(t.strip() for t in found)
        draw = ImageDraw.Draw(image)
        size = max(12, min(height // 6, int(width * 1.6 / max(1, len(text)))))
        font = ImageFont.load_default(size=size)
        box = draw.textbbox((0, 0), text, font=font)
        x = (width - (box[2] - box[0])) // 2 - box[0]
        y = (height - (box[3] - box[1])) // 2 - box[1]
        draw.text((x, y), text, fill=(0, 0, 0), font=font)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def pixels(ratio: tuple[int, int], long_edge: int) -> tuple[int, int]:
    w, h = ratio
    if w >= h:
        return long_edge, max(16, round(long_edge * h / w / 16) * 16)
    return max(16, round(long_edge * w / h / 16) * 16), long_edge


class Served:
    """A contract server running in a thread of its own (its own event loop), so a test's
    loop and the stack's components never wait on it."""

    def __init__(self, app: FastAPI, port: int) -> None:
        self.port = port
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Served:
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                return self
            threading.Event().wait(0.02)
        raise RuntimeError(f"contract server on {self.port} did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
