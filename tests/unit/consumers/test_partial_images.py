"""Which steps of a render a job's partial images are decoded at, and which renders make
them (the job's own render, an edit's, never a cascade's refine pass)."""

from __future__ import annotations

from datetime import UTC, datetime

from consumers.lane_worker.partials import partial_steps, wants_partials
from schemas.events import GenerationRouted
from schemas.spec import EditSource, GenerationSpec


def test_partial_images_are_evenly_spaced_before_the_last_step() -> None:
    assert partial_steps(1, 8) == {4: 0}
    assert partial_steps(3, 8) == {2: 0, 4: 1, 6: 2}
    assert partial_steps(2, 4) == {1: 0, 3: 1}
    assert partial_steps(3, 2) == {1: 0}  # fewer steps than asked: fewer images
    assert partial_steps(2, 1) == {}  # a one-step render has nothing in between
    assert partial_steps(0, 8) == {}


def _routed(spec: GenerationSpec, init: str | None = None) -> GenerationRouted:
    return GenerationRouted(
        job_id="job_1",
        spec=spec,
        lane="l",
        model="m",
        version="v",
        sample_steps=4,
        guidance_scale=0,
        width=64,
        height=64,
        seed=1,
        requested_at=datetime(2026, 1, 1, tzinfo=UTC),
        init_artifact_uri=init,
        strength=0.5 if init else None,
    )


def test_the_jobs_own_render_makes_them_not_a_cascades_refine_pass() -> None:
    asked = GenerationSpec(prompt="a mug", partial_images=2)
    assert wants_partials(_routed(asked))
    assert not wants_partials(_routed(asked, init="s3://b/job_1/draft.png"))  # refine pass
    assert not wants_partials(_routed(GenerationSpec(prompt="a mug")))  # none asked
    edit = asked.model_copy(update={"edit": EditSource(image_uri="s3://b/job_1/source.png")})
    assert wants_partials(_routed(edit, init="s3://b/job_1/source.png"))
