"""The OpenAI-compatible request's mapping onto Lanes: model/quality → intent, size, and the
formats the lanes cannot give (each refused naming its field)."""

from __future__ import annotations

from typing import Any

import pytest

from services.apps.gateway.openai_images import (
    ImageGenerateRequest,
    OpenAIError,
    check_output,
    intent_for,
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
        ({"stream": True}, "stream"),
    ],
)
def test_what_the_lanes_cannot_give_is_refused_naming_the_field(
    fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(OpenAIError) as raised:
        check_output(req(**fields))
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
