"""Cascade benchmark: compute per delivered image at the target resolution.

Cascade = a few-step draft at the draft size, then an img2img refine pass at the target
size in micro-batches; against one full-step render at the target size. Engine time only
(what a GPU would be busy for), measured after a warm-up, median of ``repeats``.

    lanes bench cascade --out results/
    lanes bench cascade --preset sd-turbo-class --device cuda --target 1024 --draft 512
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from services.apps.bench.stats import ensure_dir, markdown_table

__all__ = ["CascadeConfig", "run_cascade"]


@dataclass(frozen=True)
class CascadeConfig:
    preset: str = "tiny"
    device: str = "cpu"
    draft_size: int = 256
    target_size: int = 512
    draft_steps: int = 2
    refine_steps: int = 4
    refine_strength: float = 0.5
    full_steps: int = 20
    guidance: float = 5.0
    batch_sizes: tuple[int, ...] = (1, 2, 4)
    repeats: int = 2


def _timed(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def run_cascade(cfg: CascadeConfig, out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from services.apps.bench.models import preset_checkpoint
    from services.engines.diffusion import DiffusionEngine, RenderRequest

    out_dir = ensure_dir(out_dir)
    ckpt = preset_checkpoint(cfg.preset)
    t2i = DiffusionEngine.load(ckpt, name=cfg.preset, version="bench", device=cfg.device)
    refine = DiffusionEngine.load(
        ckpt, name=cfg.preset, version="bench", device=cfg.device, refine=True
    )
    full_req = RenderRequest(
        "a product photo", cfg.target_size, cfg.target_size, cfg.full_steps, cfg.guidance, 1
    )
    full_s = _timed(lambda: t2i.render_batch([full_req]), cfg.repeats)
    rows = [["single full-step render", 1, full_s * 1000, "-", "-", full_s * 1000, "baseline"]]
    per_image = {}
    for b in cfg.batch_sizes:
        drafts = [
            RenderRequest(
                f"a product photo {i}",
                cfg.draft_size,
                cfg.draft_size,
                cfg.draft_steps,
                cfg.guidance,
                i,
            )
            for i in range(b)
        ]
        images = [o.image for o in t2i.render_batch(drafts)]
        refines = [
            RenderRequest(
                f"a product photo {i}",
                cfg.target_size,
                cfg.target_size,
                cfg.refine_steps,
                0.0,
                i,
                init_image=img,
                strength=cfg.refine_strength,
            )
            for i, img in enumerate(images)
        ]
        draft_s = _timed(lambda d=drafts: t2i.render_batch(d), cfg.repeats) / b
        refine_s = _timed(lambda r=refines: refine.render_batch(r), cfg.repeats) / b
        total = draft_s + refine_s
        per_image[b] = total
        rows.append(
            [
                f"cascade, upscale batch {b}",
                b,
                total * 1000,
                draft_s * 1000,
                refine_s * 1000,
                total * 1000,
                f"{(1 - total / full_s) * 100:.0f}% less",
            ]
        )
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = ["single"] + [f"cascade b={b}" for b in per_image]
    values = [full_s * 1000] + [v * 1000 for v in per_image.values()]
    ax.bar(labels, values, color=["#999"] + ["#2a7"] * len(per_image))
    ax.set(
        ylabel="compute per delivered image (ms)",
        title=f"{cfg.target_size}px image on {cfg.device}: cascade vs single render",
    )
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "cascade.png", dpi=110)
    best = min(per_image.values())
    met = (1 - best / full_s) >= 0.40
    md = [
        f"# Cascade benchmark ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Engines: `{cfg.preset}` random-weight SD pipeline on `{cfg.device}`. Delivered image "
        f"{cfg.target_size}x{cfg.target_size}. Single render: {cfg.full_steps} steps, CFG "
        f"{cfg.guidance}. Cascade: draft {cfg.draft_size}px, {cfg.draft_steps} steps, CFG "
        f"{cfg.guidance}; refine (img2img) at {cfg.target_size}px, {cfg.refine_steps} steps at "
        f"strength {cfg.refine_strength} (so {int(cfg.refine_steps * cfg.refine_strength)} "
        f"denoising steps), no CFG. Engine time per image, median of {cfg.repeats} "
        "after a warm-up.",
        "",
        markdown_table(
            [
                "configuration",
                "batch",
                "ms per image",
                "draft ms",
                "refine ms",
                "total ms",
                "vs single",
            ],
            rows,
        ),
        "",
        "| target | measured | met |",
        "| --- | --- | --- |",
        f"| cascade ≥ 40% less compute per image than one full-step render | "
        f"{(1 - best / full_s) * 100:.0f}% less | {'yes' if met else 'NO'} |",
        "",
        "![cascade](cascade.png)",
        "",
    ]
    path = out_dir / "cascade.md"
    path.write_text("\n".join(md))
    return path
