"""The start-up batch profile stops timing larger batches once batching stops paying."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from services.engines.batching import profile_batching
from services.engines.diffusion import DiffusionEngine
from services.engines.engine import RenderRequest


class Timed(DiffusionEngine):
    """Renders by sleeping: ``per_batch`` + ``per_image`` x size seconds; records sizes."""

    def __init__(self, per_batch: float, per_image: float) -> None:  # no pipeline
        self.name, self.version, self.device, self.refine = "timed", "v1", "cpu", False
        self.per_batch, self.per_image = per_batch, per_image
        self.sizes: list[int] = []

    def render_batch(self, reqs: Sequence[RenderRequest], *args: Any, **kw: Any) -> Any:
        self.sizes.append(len(reqs))
        time.sleep(self.per_batch + self.per_image * len(reqs))
        return []


def test_a_cpu_like_engine_is_profiled_at_1_and_2_only_and_capped_at_1() -> None:
    engine = Timed(per_batch=0.0, per_image=0.02)  # a batch of n costs n singles
    profile = profile_batching(engine, 8, 64, 64, 1, 0.0)
    assert profile.cap == 1
    assert set(engine.sizes) == {1, 2}  # 4 and 8 never rendered


def test_a_gpu_like_engine_is_profiled_up_to_max_batch() -> None:
    engine = Timed(per_batch=0.03, per_image=0.001)  # a batch costs about one render
    profile = profile_batching(engine, 8, 64, 64, 1, 0.0)
    assert profile.cap == 8 and {1, 2, 4, 8} <= set(engine.sizes)
