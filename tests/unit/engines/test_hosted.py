"""The hosted engines against the contract servers (real HTTP on loopback): what each
sends, what it makes of each answer, and how it waits, retries and prices."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image
from pydantic import SecretStr

from services.engines.engine import RenderContext, RenderRequest
from services.engines.hosted.engine import HostedEngine, HostedModel
from services.engines.hosted.google import GeminiImage, ImagenPredict
from services.engines.hosted.http import ProviderHttp, RefusedHost
from services.engines.hosted.ideogram import IdeogramLegacy, IdeogramV3
from services.engines.hosted.sizes import closest_ratio, letterbox
from services.exceptions import (
    Interrupted,
    ProviderFailed,
    ProviderRejected,
    ProviderUnavailable,
    SafetyBlocked,
)
from services.kafka.local_broker import free_port
from tests.contract_servers.common import Behaviour, Served
from tests.contract_servers.google import google_app
from tests.contract_servers.ideogram import ideogram_app

KEY = "test-key-0123456789"


@pytest.fixture(scope="module")
def ideogram() -> Iterator[tuple[str, Behaviour]]:
    app, behaviour = ideogram_app(KEY)
    with Served(app, free_port()) as served:
        yield served.url, behaviour


@pytest.fixture(scope="module")
def google() -> Iterator[tuple[str, Behaviour]]:
    app, behaviour = google_app(KEY, scale=0.25)
    with Served(app, free_port()) as served:
        yield served.url, behaviour


@pytest.fixture(autouse=True)
def reset(ideogram: tuple[str, Behaviour], google: tuple[str, Behaviour]) -> None:
    for _, b in (ideogram, google):
        b.calls.clear()
        b.down, b.throttle, b.retry_s, b.retired, b.api_key = False, 0, 1.0, set(), KEY


def model(base: str, provider: str, model_id: str, **kw: Any) -> HostedModel:
    return HostedModel(
        name=kw.pop("name", model_id),
        version=model_id,
        provider=provider,
        model_id=model_id,
        base_url=base,
        api_key=SecretStr(kw.pop("key", KEY)),
        **kw,
    )


def ctx(stop: bool = False) -> RenderContext:
    async def no_device(fn: Any) -> Any:
        raise AssertionError("a hosted engine never uses the GPU thread")

    return RenderContext(lambda: stop, no_device)


def req(prompt: str = 'a poster "SALE"', w: int = 512, h: int = 512, **kw: Any) -> RenderRequest:
    return RenderRequest(prompt, w, h, 1, 0.0, kw.pop("seed", 7), **kw)


async def one(engine: HostedEngine, r: RenderRequest, stop: bool = False) -> Any:
    try:
        return (await engine.generate([r], ctx(stop)))[0]
    finally:
        await engine.http.aclose()


def test_closest_ratio_and_letterbox_keep_the_whole_image() -> None:
    assert closest_ratio(512, 288, [(1, 1), (16, 9), (4, 3)]) == (16, 9)
    assert closest_ratio(256, 512, [(1, 1), (9, 16), (2, 3)]) == (9, 16)
    wide = Image.new("RGB", (160, 90), (255, 0, 0))
    boxed = letterbox(wide, 100, 100)
    assert boxed.size == (100, 100)
    assert boxed.getpixel((50, 50)) == (255, 0, 0)  # the content, centred and whole
    assert boxed.getpixel((50, 2)) == (255, 0, 0)  # margin in the border colour (red here)


async def test_ideogram_legacy_sends_the_contract_and_fits_the_size(ideogram: Any) -> None:
    base, b = ideogram
    engine = IdeogramLegacy(model(base, "ideogram", "V_2_TURBO"))
    out = await one(engine, req(w=512, h=288, seed=2**32 - 1, negative_prompt="blur"))
    sent = b.calls[-1]["fields"]
    assert b.calls[-1]["path"] == "/generate"
    assert sent["model"] == "V_2_TURBO" and sent["aspect_ratio"] == "ASPECT_16_9"
    assert sent["seed"] == (2**32 - 1) % 2**31 and sent["negative_prompt"] == "blur"
    assert sent["num_images"] == 1
    assert out.image.size == (512, 288)  # the provider drew 1024x576; fitted back
    assert out.provider_size == (1024, 576)
    assert out.cost_usd == pytest.approx(0.05)  # V_2_TURBO's list price


async def test_ideogram_v3_multipart_and_priced_by_rendering_speed(ideogram: Any) -> None:
    base, b = ideogram
    engine = IdeogramV3(model(base, "ideogram", "V_3", options={"rendering_speed": "TURBO"}))
    out = await one(engine, req(w=384, h=512))
    sent = b.calls[-1]["fields"]
    assert b.calls[-1]["path"] == "/v1/ideogram-v3/generate"
    assert sent["rendering_speed"] == "TURBO" and sent["aspect_ratio"] == "3x4"
    assert sent["seed"] == "7" and sent["magic_prompt"] == "OFF"
    assert out.image.size == (384, 512) and out.cost_usd == pytest.approx(0.03)
    priced = IdeogramV3(model(base, "ideogram", "V_3", price_usd=0.055))
    assert (await one(priced, req())).cost_usd == pytest.approx(0.055)  # routes file wins


async def test_gemini_generate_content_size_seed_and_refine(google: Any) -> None:
    base, b = google
    engine = GeminiImage(model(base, "gemini", "gemini-3-pro-image"))
    out = await one(engine, req(w=2048, h=1152, seed=11))
    config = b.calls[-1]["body"]["generationConfig"]
    assert b.calls[-1]["path"] == "/v1beta/models/gemini-3-pro-image:generateContent"
    assert config["imageConfig"] == {"aspectRatio": "16:9", "imageSize": "2K"}
    assert config["seed"] == 11 and config["responseModalities"] == ["TEXT", "IMAGE"]
    assert out.image.size == (2048, 1152) and out.cost_usd == pytest.approx(0.134)
    refine = GeminiImage(model(base, "gemini", "gemini-3.1-flash-image", refine=True))
    init = Image.new("RGB", (256, 256), (10, 20, 30))
    out = await one(refine, req(w=512, h=512, init_image=init, strength=0.5))
    parts = b.calls[-1]["body"]["contents"][0]["parts"]
    assert parts[1]["inlineData"]["mimeType"] == "image/png"  # the draft goes with the prompt
    assert out.image.size == (512, 512) and out.cost_usd is None  # no price known: none made up


async def test_imagen_predict(google: Any) -> None:
    base, b = google
    engine = ImagenPredict(model(base, "imagen", "imagen-4.0-fast-generate-001"))
    out = await one(engine, req(w=512, h=384))
    body = b.calls[-1]["body"]
    assert body == {
        "instances": [{"prompt": 'a poster "SALE"'}],
        "parameters": {"sampleCount": 1, "aspectRatio": "4:3"},
    }
    assert out.image.size == (512, 384) and out.cost_usd == pytest.approx(0.02)


@pytest.mark.parametrize(
    ("provider", "prompt", "reason"),
    [
        ("ideogram", "[unsafe] x", "safety"),  # 200, is_image_safe false, no url
        ("ideogram", "[unsafe-prompt] x", "safety"),  # 422
        ("gemini", "[unsafe-prompt] x", "safety"),  # promptFeedback.blockReason
        ("gemini", "[unsafe] x", "safety"),  # finishReason IMAGE_SAFETY
        ("gemini", "[no-image] x", "no_image"),  # finishReason NO_IMAGE: not a safety block
        ("imagen", "[unsafe] x", "safety"),  # the filtered image left out
    ],
)
async def test_blocked_outputs_fail_with_their_reason(
    ideogram: Any, google: Any, provider: str, prompt: str, reason: str
) -> None:
    engine: HostedEngine
    if provider == "ideogram":
        engine = IdeogramV3(model(ideogram[0], "ideogram", "V_3"))
    elif provider == "gemini":
        engine = GeminiImage(model(google[0], "gemini", "gemini-3-pro-image"))
    else:
        engine = ImagenPredict(model(google[0], "imagen", "imagen-4.0-fast-generate-001"))
    with pytest.raises((SafetyBlocked, ProviderRejected)) as caught:
        await one(engine, req(prompt))
    assert caught.value.reason == reason


async def test_resource_exhausted_waits_for_retry_delay_then_resends(google: Any) -> None:
    base, b = google
    b.throttle, b.retry_s = 1, 0.6
    engine = GeminiImage(model(base, "gemini", "gemini-3-pro-image"))
    started = time.monotonic()
    task = asyncio.create_task(one(engine, req()))
    await asyncio.sleep(0.3)
    assert engine.state and engine.state.startswith("throttled") and engine.paused_for() > 0
    out = await task
    assert time.monotonic() - started >= 0.6  # no earlier than the provider's retryDelay
    assert len(b.calls) == 2 and out.image.size == (512, 512)
    assert engine.state is None


async def test_inflight_limit_backs_off_without_a_retry_time(ideogram: Any) -> None:
    base, b = ideogram
    engine = IdeogramLegacy(model(base, "ideogram", "V_2"))
    engine.throttle_backoff_s = 0.2
    out = await one(engine, req("[429] a poster"))
    assert len(b.calls) == 2 and out.image is not None


async def test_server_errors_are_retried_then_fail(ideogram: Any) -> None:
    base, b = ideogram
    engine = IdeogramV3(model(base, "ideogram", "V_3", max_retries=2))
    engine.http.backoff_s = 0.01
    assert (await one(engine, req("[500] once"))).image is not None
    assert len(b.calls) == 2
    b.calls.clear()
    b.down = True
    dead = IdeogramV3(model(base, "ideogram", "V_3", max_retries=2))
    dead.http.backoff_s = 0.01
    with pytest.raises(ProviderFailed, match="HTTP 500 after 3 attempts"):
        await one(dead, req())
    assert len(b.calls) == 3  # bounded


async def test_an_expired_output_url_costs_a_fresh_call(ideogram: Any) -> None:
    base, b = ideogram
    engine = IdeogramV3(model(base, "ideogram", "V_3"))
    out = await one(engine, req("[expired] a poster"))
    assert len(b.calls) == 2 and out.image.size == (512, 512)


async def test_a_refused_key_pauses_the_engine_and_stays_secret(ideogram: Any, google: Any) -> None:
    wrong = "wrong-key-xyz"
    pairs: list[tuple[HostedEngine, Behaviour]] = [
        (IdeogramV3(model(ideogram[0], "ideogram", "V_3", key=wrong)), ideogram[1]),
        (GeminiImage(model(google[0], "gemini", "gemini-3-pro-image", key=wrong)), google[1]),
    ]
    for engine, b in pairs:
        with pytest.raises(ProviderUnavailable) as caught:
            await one(engine, req())
        assert wrong not in str(caught.value)
        assert engine.state and engine.state.startswith("paused")
        calls = len(b.calls)
        engine.http = ProviderHttp(engine.http.base_url)  # (the first was closed)
        with pytest.raises(ProviderUnavailable):  # at once, without calling the provider
            await one(engine, req())
        assert len(b.calls) == calls


async def test_a_retired_model_is_unavailable(google: Any) -> None:
    base, b = google
    b.retired = {"imagen-4.0-fast-generate-001"}
    engine = ImagenPredict(model(base, "imagen", "imagen-4.0-fast-generate-001"))
    with pytest.raises(ProviderUnavailable, match="model not found"):
        await one(engine, req())


async def test_a_canceled_job_is_never_sent(ideogram: Any) -> None:
    base, b = ideogram
    engine = IdeogramV3(model(base, "ideogram", "V_3"))
    with pytest.raises(Interrupted):
        await one(engine, req(), stop=True)
    assert b.calls == []


async def test_calls_go_only_to_configured_hosts() -> None:
    http = ProviderHttp("https://api.ideogram.ai", download_hosts=("ideogram.ai",))
    try:
        with pytest.raises(RefusedHost):
            await http.send("GET", "http://169.254.169.254/latest/meta-data/")
        with pytest.raises(RefusedHost):
            await http.send("GET", "https://evil.example/api.ideogram.ai")
    finally:
        await http.aclose()
    with pytest.raises(ValueError, match="https"):
        IdeogramV3(model("http://api.ideogram.example", "ideogram", "V_3"))
