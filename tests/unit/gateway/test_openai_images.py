"""The OpenAI-compatible request's mapping onto Lanes: model/quality → intent, size, and the
formats the lanes cannot give (each refused naming its field)."""

from __future__ import annotations

from typing import Any

import pytest

from services.apps.gateway.openai_api.errors import OpenAIError
from services.apps.gateway.openai_api.params import (
    ImageGenerateRequest,
    intent_for,
    output_of,
    parse_form,
    size_of,
    specs_for,
)
from services.config.routes import load_routes


def req(**fields: Any) -> ImageGenerateRequest:
    return ImageGenerateRequest(prompt="a mug", **fields)


def test_model_or_quality_picks_the_intent() -> None:
    routes = load_routes(None)
    assert intent_for(req(model="lanes-final"), routes) == "final"
    assert intent_for(req(quality="high"), routes) == "final"
    assert intent_for(req(quality="low"), routes) == "preview"
    assert intent_for(req(), routes) == "draft"
    draft_model = routes.lanes[routes.intents["draft"]].model
    assert intent_for(req(model=draft_model), routes) == "draft"
    with pytest.raises(OpenAIError) as raised:
        intent_for(req(model="dall-e-3"), routes)
    assert (raised.value.status, raised.value.code, raised.value.param) == (
        404,
        "model_not_found",
        "model",
    )


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"background": "transparent"}, "background"),
        ({"output_compression": 10}, "output_compression"),
        ({"response_format": "url", "output_format": "jpeg"}, "output_format"),
        ({"stream": True, "n": 2}, "n"),
        ({"stream": True, "response_format": "url"}, "response_format"),
    ],
)
def test_what_the_lanes_cannot_give_is_refused_naming_the_field(
    fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(OpenAIError) as raised:
        output_of(req(**fields))
    assert raised.value.status == 400 and raised.value.param == param


def test_sizes_and_n_specs() -> None:
    assert size_of(req(size="auto")) is None and size_of(req()) is None
    assert size_of(req(size="512x256")) == (512, 256)
    for bad in ("100x100", "4096x64", "big", "64x64x64"):
        with pytest.raises(OpenAIError):
            size_of(req(size=bad))
    specs = specs_for(req(n=3, seed=5, size="128x128", user="u1"), "draft", "acme")
    assert [s.seed for s in specs] == [5, 6, 7]
    assert {(s.width, s.height, s.tenant, s.intent) for s in specs} == {(128, 128, "acme", "draft")}
    assert specs[0].metadata == {"api": "openai-images", "user": "u1"}
    with pytest.raises(OpenAIError) as raised:
        specs_for(req(text="  "), "draft", "acme")
    assert raised.value.param == "text"


def test_a_stream_asks_the_jobs_for_partial_images_and_a_call_does_not() -> None:
    assert output_of(req(stream=True, partial_images=2)).partial_images == 2
    assert output_of(req(partial_images=2)).partial_images == 0  # no stream: none rendered
    (spec,) = specs_for(req(), "draft", "acme", partial_images=3)
    assert spec.partial_images == 3


def test_edit_form_fields_arrive_as_text_and_are_read_as_numbers() -> None:
    form = parse_form({"prompt": "a red mug", "n": "2", "stream": "false", "seed": "7"})
    assert (form.n, form.stream, form.seed) == (2, False, 7)
    with pytest.raises(OpenAIError) as raised:
        parse_form({"prompt": "a mug", "n": "11"})
    assert raised.value.param == "n"
    with pytest.raises(OpenAIError) as raised:
        parse_form({"n": "1"})
    assert (raised.value.param, raised.value.code) == ("prompt", "missing_required_parameter")


def test_openais_mask_becomes_white_where_the_image_may_change() -> None:
    from PIL import Image

    from services.apps.gateway.openai_api.uploads import Upload, mask_of

    image = Upload(Image.new("RGB", (64, 32), "red"))
    rgba = Image.new("RGBA", (64, 32), (0, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 16, 32))  # transparent on the left: change it
    mask = mask_of(Upload(rgba), image).image
    assert mask.getpixel((4, 4)) == 255 and mask.getpixel((40, 4)) == 0
    with pytest.raises(OpenAIError) as raised:
        mask_of(Upload(Image.new("RGBA", (32, 32))), image)
    assert raised.value.param == "mask" and "size" in raised.value.message
    with pytest.raises(OpenAIError) as raised:
        mask_of(Upload(Image.new("RGB", (64, 32))), image)
    assert raised.value.param == "mask" and "alpha" in raised.value.message
