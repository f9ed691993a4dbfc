"""What a client asks for: shared by the HTTP body, the SDK and the request event."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, StrictInt, field_validator
from pydantic.json_schema import SkipJsonSchema

__all__ = ["EditSource", "GenerationSpec", "Intent", "Priority", "quoted_text"]

Intent = Literal["preview", "draft", "final"]
Priority = Literal["low", "normal", "high", "critical"]

_QUOTED = re.compile(r"[\"\u201c\u201d]([^\"\u201c\u201d]+)[\"\u201c\u201d]")


def quoted_text(prompt: str) -> str | None:
    """The text inside double quotes in a prompt, if any (straight or curly quotes)."""
    found = [m.strip() for m in _QUOTED.findall(prompt) if m.strip()]
    return " ".join(found) if found else None


NOT_BLANK = r"\S"  # JSON Schema patterns search: a string with a non-space character


class EditSource(BaseModel):
    """The image an edit starts from (and its mask: white where the image may change), as
    the gateway stored them under the job's prefix in the artifact store."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image_uri: str = Field(min_length=1, max_length=1000)
    mask_uri: str | None = Field(None, min_length=1, max_length=1000)


class GenerationSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # The document states what the validators below enforce: some non-blank character.
    prompt: str = Field(min_length=1, max_length=2000, json_schema_extra={"pattern": NOT_BLANK})
    intent: Intent = "draft"
    # The exact text the image must show. None: taken from the prompt's double quotes.
    text: str | None = Field(None, max_length=200, json_schema_extra={"pattern": NOT_BLANK})
    priority: Priority = "normal"
    webhook_url: AnyHttpUrl | None = None
    metadata: dict[str, str] = Field(default_factory=dict, max_length=32)
    # Strict: "5" or 5.0 is refused, as the document's "integer" says.
    seed: StrictInt | None = Field(None, ge=0, le=2**32 - 1)
    # What the image must not show; passed to engines that take one (diffusers, Ideogram).
    negative_prompt: str | None = Field(None, max_length=1000)
    width: StrictInt | None = Field(None, ge=64, le=2048, multiple_of=8)
    height: StrictInt | None = Field(None, ge=64, le=2048, multiple_of=8)
    tenant: str | None = Field(None, max_length=64)
    # Which moments to POST to webhook_url; each is delivered once. Default: the end only.
    # "progress": the render at 25, 50 and 75% of its steps (each sent once).
    webhook_events: list[
        Literal[
            "draft_ready", "upscaled", "verified", "succeeded", "failed", "canceled", "progress"
        ]
    ] = Field(default_factory=lambda: ["succeeded", "failed", "canceled"], max_length=7)  # type: ignore[arg-type]
    # Decoded images of the render in progress, at evenly spaced denoising steps (the OpenAI
    # images API's partial_images): each a full-size PNG among the job's ``partials``. A
    # render with fewer steps than that gives fewer.
    partial_images: StrictInt = Field(0, ge=0, le=3)
    # An edit (POST /v1/images/edits): set by the gateway, which stored the upload; not part
    # of the public request document, and refused in a client's body.
    edit: SkipJsonSchema[EditSource | None] = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be blank")
        return value

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError(
                "text must not be blank; omit it to take the quoted text of the prompt"
            )
        return value

    @property
    def expected_text(self) -> str | None:
        return self.text if self.text is not None else quoted_text(self.prompt)
