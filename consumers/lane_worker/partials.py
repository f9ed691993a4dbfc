"""Partial images: a job that asks for ``partial_images`` (1-3) gets that many full-size
decodes of its render in progress, at evenly spaced denoising steps. Each is decoded and
stored on the device's thread, inside the render, so its ``render.progress`` event is sent
before the render's outcome (same job key, same partition: in order) and a reader of the job
sees every partial image before the final one. A store that fails loses that partial image
(logged), never the render."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from consumers.lane_worker.tasks import RenderTask
from schemas.events import GenerationRouted, PartialImage
from services.storage.artifacts import ArtifactStore

__all__ = ["PartialImages", "partial_steps"]

log = structlog.get_logger("lanes.worker")


def partial_steps(count: int, total: int) -> dict[int, int]:
    """Step -> partial image index: ``count`` steps evenly spaced strictly before the last
    (the last step is the image itself); fewer when the render has fewer steps."""
    steps = sorted({max(1, round(i * total / (count + 1))) for i in range(1, count + 1)})
    return {step: index for index, step in enumerate(s for s in steps if s < total)}


def wants_partials(event: GenerationRouted) -> bool:
    """The job's own render asked for partial images: not the refine pass of a cascade (an
    edit's render, which starts from its upload, is the job's own)."""
    if event.spec.partial_images == 0:
        return False
    edit = event.spec.edit
    return event.init_artifact_uri is None or (
        edit is not None and event.init_artifact_uri == edit.image_uri
    )


@dataclass
class PartialImages:
    store: ArtifactStore

    def take(
        self, batch: Sequence[RenderTask], step: int, total: int, latents: Any
    ) -> list[PartialImage | None]:
        """The partial image each job of the batch gets at this step (None for most)."""
        out: list[PartialImage | None] = [None] * len(batch)
        if latents is None:
            return out
        for i, task in enumerate(batch):
            event = task.event
            if not wants_partials(event):
                continue
            index = partial_steps(event.spec.partial_images, total).get(step)
            if index is None:
                continue
            try:
                (image,) = task.engine.decode(latents[i : i + 1])
                uri = self.store.put_png(event.job_id, f"partial-a{event.attempt}-{index}", image)
            except Exception as exc:  # noqa: BLE001 - a partial image never fails a render
                log.warning("partial_image_failed", job_id=event.job_id, error=str(exc)[:300])
                continue
            out[i] = PartialImage(
                index=index, step=step, uri=uri, width=image.width, height=image.height
            )
        return out
