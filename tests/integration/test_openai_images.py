"""The OpenAI-compatible images API, driven by the official `openai` Python SDK (a test
dependency nobody here wrote) against the running stack on the real broker: a client
switches to Lanes by its base URL."""

from __future__ import annotations

import base64
import io
import re
import time
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from services.process.ports import free_port
from tests.support import Stack, read_topic, running_gateway, wait_until

pytestmark = pytest.mark.kafka


def sdk(base: str, key: str | None) -> openai.AsyncOpenAI:
    # max_retries=0: each call is one request, so "nothing published" is exact.
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=key or "none", max_retries=0)


def base_of(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.settings.gateway.port}"


async def test_generate_b64_url_n_and_jpeg_as_the_sdk_parses_them(stack: Stack) -> None:
    client = sdk(base_of(stack), await stack.new_key("oai-gen"))
    started = time.monotonic()
    one = await client.images.generate(prompt='a kite "SALE"', model="lanes-draft")
    took = time.monotonic() - started
    png = base64.b64decode(one.data[0].b64_json or "")
    assert png.startswith(b"\x89PNG")
    image = Image.open(io.BytesIO(png))
    assert f"{image.width}x{image.height}" == one.size
    assert one.output_format == "png" and one.quality == "medium" and one.created > 0

    # n=3 as URLs: three jobs submitted together; each URL is signed and needs no key.
    three = await client.images.generate(
        prompt="a blue mug", model="lanes-draft", n=3, response_format="url", size="128x128"
    )
    assert len(three.data) == 3 and three.size == "128x128"
    async with httpx.AsyncClient(timeout=30) as anon:
        for item in three.data:
            assert item.url and "sig=" in item.url
            got = await anon.get(item.url)
            assert got.status_code == 200 and got.content.startswith(b"\x89PNG")
            assert Image.open(io.BytesIO(got.content)).size == (128, 128)

    # jpeg with compression, the intent picked by quality; Lanes' own fields via extra_body.
    jpeg = await client.images.generate(
        prompt="a green lamp",
        quality="low",
        output_format="jpeg",
        output_compression=40,
        extra_body={"seed": 7, "negative_prompt": "blur"},
    )
    assert base64.b64decode(jpeg.data[0].b64_json or "").startswith(b"\xff\xd8")
    assert jpeg.quality == "low" and jpeg.output_format == "jpeg"

    # Each image is an ordinary Lanes job of the key's tenant.
    listed = (await stack.client(client.api_key).get("/v1/generations?limit=100")).json()
    mine = [j for j in listed["items"] if j["metadata"].get("api") == "openai-images"]
    assert len(mine) == 5 and {j["status"] for j in mine} == {"succeeded"}
    assert {j["tenant"] for j in mine} == {"oai-gen"}
    print(f"openai SDK images.generate (one draft, b64_json): {took:.2f} s")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"size": "100x100"}, "size"),
        ({"n": 11}, "n"),
        ({"background": "transparent"}, "background"),
        ({"output_compression": 50}, "output_compression"),
        ({"prompt": "   "}, "prompt"),
        ({"response_format": "url", "output_format": "webp"}, "output_format"),
        ({"stream": True, "n": 2}, "n"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field_and_nothing_is_published(
    stack: Stack, body: dict[str, Any], param: str
) -> None:
    client = sdk(base_of(stack), await stack.new_key("oai-bad"))
    before = len(await read_topic(stack.settings, stack.topics.requests))
    args = {"prompt": "a chair", "model": "lanes-draft", **body}
    with pytest.raises(openai.BadRequestError) as raised:
        await client.images.generate(**args)
    assert raised.value.param == param, raised.value.body
    assert raised.value.type == "invalid_request_error"
    assert len(await read_topic(stack.settings, stack.topics.requests)) == before


async def test_unknown_model_and_missing_key_in_openai_shape(stack: Stack) -> None:
    client = sdk(base_of(stack), await stack.new_key("oai-model"))
    with pytest.raises(openai.NotFoundError) as raised:
        await client.images.generate(prompt="a chair", model="dall-e-9")
    assert raised.value.code == "model_not_found" and raised.value.param == "model"
    assert "lanes-draft" in raised.value.message
    with pytest.raises(openai.AuthenticationError) as refused:
        await sdk(base_of(stack), "lanes_nope_nope").images.generate(prompt="a chair")
    assert refused.value.type == "authentication_error"


async def test_a_call_that_times_out_or_disconnects_leaves_its_jobs_running(stack: Stack) -> None:
    key = await stack.new_key("oai-wait")
    mine = stack.client(key)
    # A replica that waits 10 ms: 504 naming the job, which the SDK must not resubmit.
    quick = stack.settings.model_copy(update={"gateway_port": free_port(), "openai_wait_s": 0.01})
    async with running_gateway(quick, key):
        client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{quick.gateway.port}/v1", api_key=key, max_retries=2
        )
        with pytest.raises(openai.APIStatusError) as raised:
            await client.images.generate(prompt="a teapot", model="lanes-draft")
    assert raised.value.status_code == 504
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert isinstance(raised.value.body, dict)
    (job_id,) = re.findall(r"job_[0-9a-f]+", raised.value.body["message"])
    await stack.wait_for_status(job_id, {"succeeded"})
    listed = (await mine.get("/v1/generations")).json()["items"]
    assert [j["job_id"] for j in listed] == [job_id]  # one job: the SDK did not retry

    # A client that hangs up while waiting: the job is not canceled, it ends and is readable.
    async with httpx.AsyncClient(base_url=base_of(stack), timeout=0.2) as hasty:
        with pytest.raises(httpx.TimeoutException):
            await hasty.post(
                "/v1/images/generations",
                json={"prompt": "a vase", "model": "lanes-draft"},
                headers={"Authorization": f"Bearer {key}"},
            )

    async def second_done() -> bool:
        items = (await mine.get("/v1/generations")).json()["items"]
        return len(items) == 2 and all(j["status"] == "succeeded" for j in items)

    await wait_until(second_done, timeout=60, what="the abandoned call's job to succeed")


async def test_a_stream_carries_partial_images_of_the_render_then_the_image(stack: Stack) -> None:
    client = sdk(base_of(stack), await stack.new_key("oai-stream"))
    stream = await client.images.generate(
        prompt="a lighthouse at dusk", model="lanes-final", stream=True, partial_images=2
    )
    events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    partials, done = events[:2], events[2]
    assert [p.partial_image_index for p in partials] == [0, 1]
    pictures = [Image.open(io.BytesIO(base64.b64decode(e.b64_json))) for e in events]
    # Real decodes of the render's latents at the first stage's size (not 64 px previews),
    # then the cascade's delivered image.
    assert [p.size for p in pictures[:2]] == [(256, 256)] * 2 and partials[0].size == "256x256"
    assert pictures[0].tobytes() != pictures[1].tobytes()
    assert pictures[2].size == (512, 512) and done.size == "512x512"
    assert done.output_format == "png" and done.quality == "high"
    (job,) = (await stack.client(client.api_key).get("/v1/generations")).json()["items"]
    assert [p["index"] for p in job["partials"]] == [0, 1]
    assert all(p["uri"].startswith(base_of(stack)) for p in job["partials"])


def png_of(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


async def test_edits_with_and_without_a_mask(stack: Stack) -> None:
    client = sdk(base_of(stack), await stack.new_key("oai-edit"))
    source = Image.new("RGB", (256, 256), (200, 40, 40))
    plain = await client.images.edit(
        image=("shirt.png", png_of(source), "image/png"), prompt="a blue shirt", size="256x256"
    )
    edited = Image.open(io.BytesIO(base64.b64decode(plain.data[0].b64_json or "")))
    assert edited.size == (256, 256) and plain.size == "256x256"

    # OpenAI's mask: transparent where the image may change (the centre). Two edits with
    # different prompts and seeds differ in the centre and keep (nearly) the rest.
    mask = Image.new("RGBA", (256, 256), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (64, 64, 192, 192))
    outs = []
    for prompt, seed in (("a cat", 1), ("a red dog on a hill", 9)):
        answer = await client.images.edit(
            image=("shirt.png", png_of(source), "image/png"),
            mask=("mask.png", png_of(mask), "image/png"),
            prompt=prompt,
            size="256x256",
            extra_body={"seed": seed},
        )
        outs.append(Image.open(io.BytesIO(base64.b64decode(answer.data[0].b64_json or ""))))
    a, b = (o.convert("L").tobytes() for o in outs)

    def diff(box: tuple[int, int, int, int]) -> float:
        x0, y0, x1, y1 = box
        idx = [y * 256 + x for y in range(y0, y1) for x in range(x0, x1)]
        return sum(abs(a[i] - b[i]) for i in idx) / len(idx)

    centre, corner = diff((96, 96, 160, 160)), diff((0, 0, 48, 48))
    assert centre > 4 * corner, (centre, corner)

    # Streamed, an edit's partial image (its render, from the upload) then the image.
    stream = await client.images.edit(
        image=("shirt.png", png_of(source), "image/png"),
        prompt="a green shirt",
        size="256x256",
        stream=True,
        partial_images=1,
    )
    kinds = [e.type async for e in stream]
    assert kinds == ["image_edit.partial_image", "image_edit.completed"]
    jobs = (await stack.client(client.api_key).get("/v1/generations")).json()["items"]
    assert len(jobs) == 4 and {j["status"] for j in jobs} == {"succeeded"}
    print(f"edit: centre changed {centre:.1f}, kept corner {corner:.1f} (mean |diff| of 255)")


BAD_UPLOADS = [
    ({"image": ("x.png", b"not an image", "image/png")}, "image"),
    ({"image": ("x.gif", b"GIF89a" + bytes(40), "image/gif")}, "image"),
    ({"mask": ("m.png", b"", "image/png")}, "mask"),
    ({"mask": "small"}, "mask"),
    ({"mask": "opaque"}, "mask"),
    ({"image": "large"}, "image"),
]


async def test_a_bad_upload_is_a_400_naming_it_and_nothing_is_published(stack: Stack) -> None:
    key = await stack.new_key("oai-upload")
    source = png_of(Image.new("RGB", (128, 128), "white"))
    made = {
        "small": ("m.png", png_of(Image.new("RGBA", (64, 64))), "image/png"),
        "opaque": ("m.png", png_of(Image.new("RGB", (128, 128))), "image/png"),
        # Over the limit: noise does not compress.
        "large": ("big.png", png_of(Image.effect_noise((2200, 2200), 80)), "image/png"),
    }
    # One replica with a 4 MiB upload limit serves every case.
    quick = stack.settings.model_copy(
        update={"gateway_port": free_port(), "openai_image_max_bytes": 4 * 2**20}
    )
    before = len(await read_topic(stack.settings, stack.topics.requests))
    async with running_gateway(quick, key):
        client = sdk(f"http://127.0.0.1:{quick.gateway.port}", key)
        for files, param in BAD_UPLOADS:
            args = {"image": ("src.png", source, "image/png")}
            args.update({k: made.get(v, v) if isinstance(v, str) else v for k, v in files.items()})
            with pytest.raises(openai.BadRequestError) as raised:
                await client.images.edit(prompt="a hat", **args)
            assert raised.value.param == param, (files, raised.value.body)
    assert len(await read_topic(stack.settings, stack.topics.requests)) == before
