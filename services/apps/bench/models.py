"""Random-weight checkpoints for the benchmarks, built once into the user's model cache."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.config.settings import Settings
    from services.engines.tiny import TinyConfig

__all__ = ["models_cache", "preset_checkpoint", "preset_config", "bench_settings"]


def bench_settings(bootstrap: str, workdir: Path, **fields: Any) -> Settings:
    """A bench run's settings: its own topics and groups (a uuid prefix) on ``bootstrap``,
    its state under ``workdir``, the model cache shared across runs."""
    from services.config.settings import Settings

    ns = f"bench{uuid.uuid4().hex[:8]}."
    defaults: dict[str, Any] = dict(state_dir=workdir / "state", models_dir=models_cache())
    return Settings(
        kafka_bootstrap=bootstrap, topic_prefix=ns, group_prefix=ns, **{**defaults, **fields}
    )


def models_cache() -> Path:
    """``LANES_MODELS_DIR``, else ``.lanes/models``: a random-weight build is written once per
    config, not once per run (the sdxl-class one is ~13 GB of fp32 weights)."""
    from services.config.settings import Settings

    return Settings().models_path


def preset_config(preset: str) -> TinyConfig:
    from services.engines.tiny import PRESETS

    if preset not in PRESETS:
        raise SystemExit(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    return PRESETS[preset]


def preset_checkpoint(preset: str) -> Path:
    from services.config.routes import ModelSpec, checkpoint_dir

    return checkpoint_dir(
        f"bench-{preset}", ModelSpec(version="bench", tiny=preset_config(preset)), models_cache()
    )
