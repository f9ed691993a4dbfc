"""The OpenAI-compatible routes' request documents against the official SDK's own parameter
types (``openai.types.image_generate_params``, ``image_edit_params``): every parameter the
SDK sends is in our schema with a compatible type, what it requires we require, and every
value its ``Literal`` types allow is either served or refused with a 400 naming the field
(the refusals listed here, each with its reason)."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import pytest
from openai.types import image_edit_params, image_generate_params
from pydantic import ValidationError

from services.apps.gateway.openai_api.errors import OpenAIError, invalid
from services.apps.gateway.openai_api.params import (
    ImageEditRequest,
    ImageGenerateRequest,
    output_of,
)
from services.apps.gateway.openai_api.routes import EDIT_FORM

# Values the SDK may send that the lanes cannot give: a 400 naming the field.
REFUSED = {
    ("background", "transparent"): "the lanes render opaque images",
    ("output_format", "gif"): "raster stills only: png, jpeg, webp",
    ("output_format", "svg"): "raster stills only: png, jpeg, webp",
}
JSON_TYPES = {str: "string", int: "integer", bool: "boolean", dict: "object"}


def _literals(tp: Any) -> set[Any] | None:
    """The values a Literal (inside Optional/Union) allows; None if any value of a plain
    type is allowed too (``Union[str, Literal[...]]``)."""
    if get_origin(tp) is Literal:
        return set(get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        found: set[Any] = set()
        for arg in get_args(tp):
            if arg is type(None):
                continue
            inner = _literals(arg)
            if inner is None:
                return None
            found |= inner
        return found
    return None


def _base_types(tp: Any) -> set[str]:
    """The JSON types a parameter's annotation allows (ignoring None)."""
    if get_origin(tp) in (Union, types.UnionType):
        return set().union(*(_base_types(a) for a in get_args(tp) if a is not type(None)))
    if get_origin(tp) is Literal:
        return {JSON_TYPES[type(v)] for v in get_args(tp)}
    if isinstance(tp, type) and issubclass(tp, dict):
        return {"object"}
    return {JSON_TYPES.get(tp, "file")}


def _schema_types(prop: dict[str, Any]) -> set[str]:
    options = prop.get("anyOf", [prop])
    out = set()
    for o in options:
        if o.get("type") == "null":
            continue
        if "enum" in o or "const" in o:
            out |= {JSON_TYPES[type(v)] for v in o.get("enum", [o.get("const")])}
        elif o.get("format") == "binary":
            out.add("file")
        elif "type" in o:
            out.add(o["type"])
    return out


SDK = {
    "generate": (
        get_type_hints(image_generate_params.ImageGenerateParamsBase),
        ImageGenerateRequest.model_json_schema(),
        image_generate_params.ImageGenerateParamsBase.__required_keys__,
    ),
    "edit": (
        get_type_hints(image_edit_params.ImageEditParamsBase),
        EDIT_FORM["requestBody"]["content"]["multipart/form-data"]["schema"],
        image_edit_params.ImageEditParamsBase.__required_keys__,
    ),
}


@pytest.mark.parametrize("call", sorted(SDK))
def test_every_sdk_parameter_is_in_our_schema_with_a_compatible_type(call: str) -> None:
    hints, schema, required = SDK[call]
    props = schema["properties"]
    missing = set(hints) - set(props)
    assert not missing, f"{call}: the SDK sends {sorted(missing)}, our schema lacks them"
    assert "stream" in props and "partial_images" in props
    assert set(required) <= set(schema.get("required", [])), (call, required)
    for name, tp in hints.items():
        sdk, ours = _base_types(tp), _schema_types(props[name])
        if sdk == {"file"} or name in ("image", "mask", "markup"):
            assert "file" in ours, (call, name, ours)
            continue
        assert sdk & ours or (sdk == {"integer"} and "number" in ours), (call, name, sdk, ours)


@pytest.mark.parametrize("call", sorted(SDK))
def test_every_value_the_sdks_literals_allow_is_served_or_refused_naming_the_field(
    call: str,
) -> None:
    hints, _, _ = SDK[call]
    model = ImageGenerateRequest if call == "generate" else ImageEditRequest
    checked = 0
    for name, tp in hints.items():
        values = _literals(tp)
        if not values:
            continue
        for value in sorted(values, key=str):
            try:
                output_of(model(prompt="a mug", **{name: value}))
            except ValidationError as exc:
                error = invalid(exc.errors())
                assert (name, value) in REFUSED, (name, value, error.message)
                assert error.param == name
            except OpenAIError as error:
                assert (name, value) in REFUSED, (name, value, error.message)
                assert (error.status, error.param) == (400, name)
            else:
                assert (name, value) not in REFUSED, (name, value)
            checked += 1
    assert checked >= 20, checked  # quality, size, formats, background... all seen


def test_animated_and_vector_output_are_refused_naming_the_field() -> None:
    for fields, param in (({"frame_count": 4}, "frame_count"), ({"svg": {}}, "svg")):
        with pytest.raises(OpenAIError) as raised:
            output_of(ImageGenerateRequest(prompt="a mug", **fields))
        assert raised.value.param == param
    assert typing.get_type_hints(ImageGenerateRequest)  # the model itself is well-formed
