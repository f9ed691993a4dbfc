"""The one routing rule: every routed event, whoever routes, is built by ``route``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from consumers.verifier import Verifier
from schemas.control import LaneDesired, ModelRef
from schemas.events import GenerationRouted, RenderCompleted, Timings, VerificationCompleted
from schemas.spec import GenerationSpec
from schemas.topics import Topics
from services.config.routes import load_routes
from services.domain.routing import Job, route, seed_for
from services.storage.artifacts import LocalArtifactStore

ROUTES = load_routes(None)
AT = datetime(2026, 12, 1, tzinfo=UTC)


def _job(**spec: object) -> Job:
    return Job("job_1", GenerationSpec(prompt='a poster "SALE"', intent="final", **spec), AT)


def test_first_routing_takes_the_lane_s_spec_and_the_job_s_stable_seed() -> None:
    routed = route(ROUTES, {}, _job(), "final", producer="lanes-router")
    lane = ROUTES.lanes["final"]
    assert (routed.model, routed.version) == (lane.model, ROUTES.models[lane.model].version)
    assert (routed.sample_steps, routed.guidance_scale) == (lane.sample_steps, lane.guidance_scale)
    assert (routed.width, routed.height) == (lane.width, lane.height)
    assert routed.seed == seed_for("job_1") and routed.attempt == 1 and routed.reason is None
    assert routed.init_artifact_uri is None and routed.strength is None


def test_the_client_s_size_and_seed_win_over_the_lane_s() -> None:
    routed = route(ROUTES, {}, _job(width=320, height=192, seed=7), "final", producer="p")
    assert (routed.width, routed.height, routed.seed) == (320, 192, 7)


def test_version_and_steps_follow_the_lane_s_current_desired_state() -> None:
    desired = LaneDesired(
        lane="final", revision=3, stable=ModelRef(model="tiny-sd-b", version="b2"), sample_steps=9
    )
    routed = route(ROUTES, {"final": desired}, _job(), "final", producer="p")
    assert (routed.model, routed.version, routed.sample_steps) == ("tiny-sd-b", "b2", 9)
    other = route(ROUTES, {"final": desired}, _job(), "fallback", producer="p")
    assert other.version == ROUTES.models[ROUTES.lanes["fallback"].model].version


def test_a_cascade_refines_at_the_cascade_s_size_with_the_refine_lane_s_strength() -> None:
    cascade = ROUTES.lanes["final"].cascade
    assert cascade is not None
    first = route(ROUTES, {}, _job(), "final", producer="p")
    refine = route(
        ROUTES,
        {},
        Job.of(first),
        cascade.lane,
        producer="w",
        size=(cascade.width, cascade.height),
        init_artifact_uri="file:///draft.png",
    )
    assert (refine.lane, refine.width, refine.height) == ("upscale", 512, 512)
    assert refine.strength == ROUTES.lanes["upscale"].refine_strength
    assert refine.sample_steps == ROUTES.lanes["upscale"].sample_steps
    assert refine.seed == first.seed and refine.attempt == first.attempt


def test_a_fallback_is_a_new_attempt_at_the_fallback_lane_s_size_with_the_reason() -> None:
    first = route(ROUTES, {}, _job(), "final", producer="p")
    fallback = route(
        ROUTES, {}, Job.of(first, attempt=2), "fallback", "out of memory", producer="w"
    )
    lane = ROUTES.lanes["fallback"]
    assert (fallback.attempt, fallback.reason, fallback.sample_steps) == (
        2,
        "out of memory",
        lane.sample_steps,
    )
    assert (fallback.width, fallback.height) == (lane.width, lane.height)


def test_a_typography_rerender_renders_at_the_rerender_lane_s_size_not_the_replaced_one(
    tmp_path: Path,
) -> None:
    """Decided on purpose: the rerender lane renders at its own draft size and its cascade
    brings the image to the size the intent's lane delivered (512 px both ways)."""
    verifier = Verifier(LocalArtifactStore(tmp_path), Topics(), ROUTES, 0.8)
    done = RenderCompleted(
        job_id="job_1",
        lane="upscale",
        attempt=1,
        stage="upscaled",
        model="tiny-sd",
        version="tiny-v1",
        instance="i",
        artifact_uri="file:///up.png",
        width=512,
        height=512,
        seed=11,
        sample_steps=4,
        spec=_job().spec,
        requested_at=AT,
        expected_text="SALE",
        timings=Timings(queue_wait_ms=1, inference_ms=1, total_ms=1),
    )
    result = VerificationCompleted(
        job_id="job_1",
        artifact_uri="file:///up.png",
        expected="SALE",
        read="S",
        score=0.1,
        passed=False,
        threshold=0.8,
        ocr_ms=1,
    )
    try:
        _, out = verifier._reroute(done, result, "rerender")
    finally:
        verifier.close()
    rerender = GenerationRouted.model_validate_json(out.value or b"")
    lane = ROUTES.lanes["rerender"]
    assert (rerender.width, rerender.height) == (lane.width, lane.height) != (512, 512)
    assert lane.cascade is not None and (lane.cascade.width, lane.cascade.height) == (512, 512)
    assert rerender.attempt == 2 and rerender.seed != done.seed and rerender.model == lane.model
    assert rerender.reason is not None and "typography" in rerender.reason


def test_an_edit_goes_to_the_refine_lane_from_its_upload_with_its_mask() -> None:
    from schemas.spec import EditSource

    edit = EditSource(image_uri="s3://b/job_1/source.png", mask_uri="s3://b/job_1/mask.png")
    job = _job(edit=edit)
    lane, spec = ROUTES.lane_of(job.spec)
    assert lane == ROUTES.edit_lane and spec.refine_strength is not None
    routed = route(ROUTES, {}, job, lane, producer="lanes-router")
    assert (routed.init_artifact_uri, routed.mask_artifact_uri) == (edit.image_uri, edit.mask_uri)
    assert routed.strength == spec.refine_strength
    retry = route(ROUTES, {}, job, lane, producer="w", init_artifact_uri=edit.image_uri)
    assert retry.mask_artifact_uri == edit.mask_uri  # a retry on stable keeps the mask
    assert ROUTES.lane_of(_job().spec)[0] == "final"  # not an edit: its intent's lane
