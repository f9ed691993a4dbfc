"""JSON Schema for every event and record, for publishers in other languages."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from schemas import control, events, records
from schemas.ops import SignedCommand
from schemas.spec import GenerationSpec

__all__ = ["SCHEMA_MODELS", "export_schemas"]

SCHEMA_MODELS: dict[str, type[BaseModel]] = {
    "generation.requested": events.GenerationRequested,
    "generation.routed": events.GenerationRouted,
    "render.started": events.RenderStarted,
    "render.completed": events.RenderCompleted,
    "render.failed": events.RenderFailed,
    "render.rerouted": events.RenderRerouted,
    "verification.completed": events.VerificationCompleted,
    "generation.cancel_requested": events.CancelRequested,
    "generation.deferred": events.GenerationDeferred,
    "render.canceled": events.RenderCanceled,
    "render.progress": events.RenderProgress,
    "job.state": records.JobState,
    "dead.letter": records.DeadLetter,
    "webhook.delivery": records.WebhookDelivery,
    "webhook.message": records.WebhookMessage,
    "generation.spec": GenerationSpec,
    # Control plane: ops tooling in other languages signs OpsCommand into SignedCommand.
    "ops.command": control.OpsCommand,
    "ops.signed_command": SignedCommand,
    "ops.result": control.OpsResult,
    "control.lane_desired": control.LaneDesired,
    "worker.status": control.WorkerStatus,
}


def export_schemas(directory: Path) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in SCHEMA_MODELS.items():
        schema = model.model_json_schema(mode="validation")
        schema["$id"] = f"https://lanes.dev/schemas/{name}.json"
        path = directory / f"{name}.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
