"""Hosted models in the routes file: validation, defaults, aliases of retired models, and
``${VAR:-default}`` from the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from schemas.control import LaneDesired, ModelRef, OpsCommand
from services.config.routes import Routes, expand_env, load_routes
from services.domain.control_state import apply_command

SEED_MIX = Path(__file__).parents[3] / "infra" / "routes" / "seed-mix.yaml"
GEMINI = {
    "provider": "gemini",
    "model_id": "gemini-3-pro-image",
    "base_url": "https://generativelanguage.googleapis.com",
    "api_key_env": "LANES_GEMINI_API_KEY",
}


def routes(models: dict[str, Any], **lanes: dict[str, Any]) -> Routes:
    return Routes.model_validate(
        {
            "models": {"tiny": {"tiny": {"seed": 0}, "version": "t1"}, **models},
            "lanes": {"final": {"model": "tiny", "sample_steps": 1}, **lanes},
            "intents": {"draft": "draft" if "draft" in lanes else "final", "final": "final"},
        }
    )


def test_a_hosted_lane_defaults_to_the_providers_in_flight_limit() -> None:
    r = routes(
        {"nb": GEMINI, "iv3": {**GEMINI, "provider": "ideogram", "model_id": "V_3"}},
        draft={"model": "nb"},
        fb={"model": "iv3"},
    )
    assert r.models["nb"].version == "gemini-3-pro-image"  # the model id, unless given
    assert r.lanes["draft"].max_concurrency == 8 and r.lanes["draft"].sample_steps == 1
    assert r.lanes["fb"].max_concurrency == 10  # Ideogram: ~10 images in flight per org


@pytest.mark.parametrize(
    ("model", "lane", "error"),
    [
        ({k: v for k, v in GEMINI.items() if k != "api_key_env"}, {}, "must name 'api_key_env'"),
        ({**GEMINI, "tiny": {"seed": 0}}, {}, "takes no 'path' or 'tiny'"),
        ({**GEMINI, "api_key_env": "lower-case"}, {}, "api_key_env"),
        (
            {**GEMINI, "provider": "ideogram", "model_id": "V_3"},
            {"refine_strength": 0.5},
            "cannot refine",
        ),
        (GEMINI, {"on_safety": "fallback"}, "fallback it lacks"),
    ],
)
def test_hosted_models_are_checked(model: dict[str, Any], lane: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        routes({"m": model}, draft={"model": "m", **lane})


def test_an_alias_keeps_a_retired_name_working_with_a_warning() -> None:
    r = load_routes(SEED_MIX)
    assert r.lanes["refine"].model == "gemini-3.1-flash-image"
    (notice,) = r.notices("refine")
    assert "'imagen-4-fast' is retired: served by 'gemini-3.1-flash-image'" in notice
    assert r.notices("draft") == []
    # `lanes ops deploy --model imagen-4-fast` means its successor too.
    state = LaneDesired(lane="refine", stable=ModelRef(model="x", version="1"))
    desired = apply_command(
        state, OpsCommand(action="deploy", lane="refine", model="imagen-4-fast"), r
    )
    assert desired.stable == ModelRef(
        model="gemini-3.1-flash-image", version="gemini-3.1-flash-image"
    )


def test_an_alias_must_point_at_a_model(tmp_path: Path) -> None:
    doc = yaml.safe_load(SEED_MIX.read_text())
    doc["models"]["imagen-4-fast"]["alias_of"] = "nowhere"
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ValidationError, match="alias of 'nowhere'"):
        load_routes(tmp_path / "r.yaml")


def test_routes_take_variables_from_the_environment() -> None:
    text = "base_url: ${LANES_X_URL:-https://api.example}"
    assert expand_env(text, {}) == "base_url: https://api.example"
    assert expand_env(text, {"LANES_X_URL": "http://127.0.0.1:9"}) == "base_url: http://127.0.0.1:9"
    with pytest.raises(ValueError, match="LANES_Y"):
        expand_env("${LANES_Y}", {})


def test_the_seed_mix_routes_each_intent_where_the_marketplace_ran_it() -> None:
    r = load_routes(SEED_MIX)
    provider = {lane: r.models[spec.model].provider for lane, spec in r.lanes.items()}
    assert r.models[r.lane_for("preview")[1].model].model_id == "V_2_TURBO"
    assert r.models[r.lane_for("draft")[1].model].model_id == "gemini-3-pro-image"
    final = r.lane_for("final")[1]
    assert provider["final"] == "diffusers" and final.cascade is not None
    assert r.lanes[final.cascade.lane].model == "gemini-3.1-flash-image"
    assert r.models[r.lanes["fallback"].model].model_id == "V_3"
    assert {spec.fallback_lane for lane, spec in r.lanes.items() if lane != "refine"} == {
        "fallback",
        None,
    }
