from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from consumers.verifier import Verifier
from schemas.events import RenderCompleted, Timings
from schemas.spec import GenerationSpec
from schemas.topics import Topics
from services.config.routes import TypographySpec, load_routes
from services.storage.artifacts import LocalArtifactStore


def _render(store: LocalArtifactStore) -> RenderCompleted:
    noise = Image.fromarray((np.random.default_rng(1).random((256, 256, 3)) * 255).astype("uint8"))
    uri = store.put_png("job_v", "draft-a1", noise)
    return RenderCompleted(
        job_id="job_v",
        stage="draft",
        lane="draft",
        model="m",
        version="v",
        instance="i",
        artifact_uri=uri,
        width=256,
        height=256,
        seed=1,
        sample_steps=1,
        expected_text="SUMMER SALE",
        spec=GenerationSpec(prompt='"SUMMER SALE"'),
        timings=Timings(queue_wait_ms=0, inference_ms=0, total_ms=0),
    )


@pytest.mark.slow
def test_missing_font_is_recorded_on_the_verification(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    verifier = Verifier(
        store, Topics(), load_routes(None), 0.8, font_path=str(tmp_path / "nope.ttf")
    )
    result = verifier._check(_render(store), TypographySpec(repair=True))
    assert not result.final_passed and result.repaired_uri is None
    assert "repair failed" in (result.repair_error or "") and "cannot be loaded" in (
        result.repair_error or ""
    )


@pytest.mark.slow
def test_repair_off_leaves_the_render_as_it_is(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    verifier = Verifier(store, Topics(), load_routes(None), 0.8)
    result = verifier._check(_render(store), TypographySpec(repair=False))
    assert result.repaired_uri is None and result.repair_error is None and not result.passed
