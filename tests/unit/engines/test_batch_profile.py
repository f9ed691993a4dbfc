"""The start-up batch profile stops timing larger batches once batching stops paying."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from services.engines.batching import profile_batching, warm_up
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


class Recorded(Timed):
    """Records each render's (width, height, steps, strength)."""

    def __init__(self, device: str, refine: bool = False) -> None:
        super().__init__(0.0, 0.0)
        self.device, self.refine = device, refine
        self.shapes: list[tuple[int, int, int, float | None]] = []

    def render_batch(self, reqs: Sequence[RenderRequest], *args: Any, **kw: Any) -> Any:
        self.shapes += [(r.width, r.height, r.steps, r.strength) for r in reqs]
        return []


def test_a_version_warms_at_the_lanes_size_on_an_accelerator_and_small_on_a_cpu() -> None:
    gpu, cpu = Recorded("cuda:0"), Recorded("cpu")
    warm_up(gpu, 512, 768, 8, 5.0)
    warm_up(cpu, 512, 768, 8, 5.0)
    assert gpu.shapes == [(512, 768, 4, None)]  # kernels are chosen per shape: its own
    assert cpu.shapes == [(64, 64, 1, None)]  # a CPU's set-up does not depend on size
    refine = Recorded("cpu", refine=True)
    warm_up(refine, 512, 512, 4, 0.0, strength=0.2)
    ((_, _, steps, strength),) = refine.shapes
    assert strength == 0.2 and int(steps * strength) >= 1  # img2img runs at least one step
