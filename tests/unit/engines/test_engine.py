from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.config.routes import checkpoint_dir, load_routes
from services.engines.diffusion import DiffusionEngine, RenderRequest, check_inputs


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> DiffusionEngine:
    routes = load_routes(None)
    spec = routes.models["tiny-sd"]
    path = checkpoint_dir("tiny-sd", spec, tmp_path_factory.mktemp("models"))
    assert (path / "model_index.json").is_file() and (path / "unet").is_dir()
    return DiffusionEngine.load(path, name="tiny-sd", version=spec.version)


def _req(**kw) -> RenderRequest:
    base = dict(prompt="a poster", width=128, height=96, steps=2, guidance_scale=0.0, seed=7)
    return RenderRequest(**{**base, **kw})


@pytest.mark.slow
def test_tiny_checkpoint_renders_deterministically(engine: DiffusionEngine) -> None:
    a = np.asarray(engine.render(_req()).image)
    b = np.asarray(engine.render(_req()).image)
    c = np.asarray(engine.render(_req(seed=8)).image)
    assert a.shape == (96, 128, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.std() > 1.0  # not a blank image


def test_check_inputs_gives_concise_errors() -> None:
    with pytest.raises(ValueError, match="height must be divisible by 8, got 500"):
        check_inputs(_req(height=500))
    with pytest.raises(ValueError, match="steps must be at least 1"):
        check_inputs(_req(steps=0))


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        DiffusionEngine.load(tmp_path, name="x", version="v")


def test_sdxl_shaped_checkpoint_loads_through_the_same_path_and_renders(tmp_path: Path) -> None:
    """The SDXL-class preset's code path (two text encoders, text_time conditioning), small."""
    from PIL import Image

    from services.engines.tiny import PRESETS, build_tiny_checkpoint

    path = build_tiny_checkpoint(tmp_path / "xl", PRESETS["tiny-xl"])
    engine = DiffusionEngine.load(path, name="tiny-xl", version="v1", device="cpu")
    assert type(engine.pipeline).__name__ == "StableDiffusionXLPipeline"
    outs = engine.render_batch([RenderRequest("a poster", 64, 64, 2, 5.0, seed) for seed in (1, 2)])
    assert [o.image.size for o in outs] == [(64, 64), (64, 64)] and outs[0].batch_size == 2
    alone = engine.render_batch([RenderRequest("a poster", 64, 64, 2, 5.0, 2)])[0]
    assert (
        np.abs(np.asarray(alone.image, dtype=int) - np.asarray(outs[1].image, dtype=int)).max() <= 2
    )
    refine = DiffusionEngine.load(path, name="tiny-xl", version="v1", device="cpu", refine=True)
    up = refine.render_batch(
        [
            RenderRequest(
                "a poster", 128, 128, 4, 5.0, 1, init_image=Image.new("RGB", (64, 64)), strength=0.5
            )
        ]
    )
    assert up[0].image.size == (128, 128)
