from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas.export import SCHEMA_MODELS, export_schemas
from services.config.routes import load_routes
from services.config.settings import Settings
from services.signing.control import generate_keypair


def test_placeholder_secret_refused_outside_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANES_PROFILE", "production")
    monkeypatch.delenv("LANES_KAFKA_BOOTSTRAP", raising=False)
    # The loopback default would point every pod at itself: the cluster must be named.
    with pytest.raises(ValidationError, match="LANES_KAFKA_BOOTSTRAP must name the cluster"):
        Settings()
    monkeypatch.setenv("LANES_KAFKA_BOOTSTRAP", "kafka-0.kafka:9093,kafka-1.kafka:9093")
    with pytest.raises(ValidationError, match="in the clear"):
        Settings()
    monkeypatch.setenv("LANES_KAFKA_ALLOW_PLAINTEXT", "true")
    with pytest.raises(ValidationError, match="LANES_CONTROL_VERIFY_KEYS"):
        Settings()
    monkeypatch.setenv("LANES_CONTROL_VERIFY_KEYS", generate_keypair()[1])
    with pytest.raises(ValidationError, match="LANES_WEBHOOK_SECRET"):
        Settings()
    monkeypatch.setenv("LANES_WEBHOOK_SECRET", "whsec_c2VjcmV0LWZvci1wcm9kdWN0aW9u")
    with pytest.raises(ValidationError, match="LANES_OPS_KEY"):
        Settings()
    monkeypatch.setenv("LANES_OPS_KEY", "whsec_b3BzLWtleS1mb3ItcHJvZHVjdGlvbg==")
    # Image URLs are signed with a key of the operator's, long enough to resist guessing.
    with pytest.raises(ValidationError, match="LANES_ARTIFACT_URL_KEY must be set"):
        Settings()
    monkeypatch.setenv("LANES_ARTIFACT_URL_KEY", "short")
    with pytest.raises(ValidationError, match="at least 32"):
        Settings()
    monkeypatch.setenv("LANES_ARTIFACT_URL_KEY", "k" * 40)
    # Outside one machine, images go to an object store (or a disk the operator says
    # every host shares), never to the process's own directory.
    with pytest.raises(ValidationError, match="LANES_ARTIFACTS"):
        Settings()
    monkeypatch.setenv("LANES_ARTIFACTS", "s3://lanes-prod/images")
    assert Settings().profile == "production"


def test_secret_is_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANES_WEBHOOK_SECRET", "whsec_c2VjcmV0LWZvci1wcm9kdWN0aW9u")
    settings = Settings()
    assert "c2VjcmV0" not in repr(settings) and "c2VjcmV0" not in str(settings.model_dump())


def test_allowed_hosts_from_comma_separated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANES_WEBHOOK_ALLOWED_HOSTS", "127.0.0.1, localhost")
    assert Settings().webhooks.allowed_hosts == ["127.0.0.1", "localhost"]


def test_default_routes_send_intents_to_their_lanes() -> None:
    routes = load_routes(None)
    assert routes.lane_for("draft")[0] == "draft"
    assert routes.lane_for("final")[0] == "final"
    assert routes.lanes["final"].sample_steps > routes.lanes["draft"].sample_steps


def test_routes_file_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "routes.yaml"
    bad.write_text(
        "models: {m: {version: v1, tiny: {}}}\nlanes: {draft: {model: nope, sample_steps: 2}}\n"
        "intents: {draft: draft, final: draft}\n"
    )
    with pytest.raises(ValidationError, match="unknown model 'nope'"):
        load_routes(bad)


def test_checkpoint_path_is_relative_to_routes_file(tmp_path: Path) -> None:
    f = tmp_path / "routes.yaml"
    f.write_text(
        "models: {sd: {version: v1, path: ckpt/sd}}\n"
        "lanes: {draft: {model: sd, sample_steps: 2}}\nintents: {draft: draft, final: draft}\n"
    )
    assert load_routes(f).models["sd"].path == tmp_path / "ckpt" / "sd"


def test_schema_export_writes_one_schema_per_event(tmp_path: Path) -> None:
    import json

    paths = export_schemas(tmp_path)
    assert len(paths) == len(SCHEMA_MODELS)
    requested = json.loads((tmp_path / "generation.requested.json").read_text())
    assert "spec" in requested["properties"] and "job_id" in requested["required"]


def test_every_job_event_type_has_a_json_schema() -> None:
    from typing import get_args

    from schemas.events import JobEvent

    union = get_args(get_args(JobEvent)[0])
    exported = set(SCHEMA_MODELS.values())
    assert [m.__name__ for m in union if m not in exported] == []
