"""What clients see of a job names every image by a URL under the gateway, never a path."""

from __future__ import annotations

from schemas.records import Artifact, JobState, Verification

BASE = "https://lanes.example.com/"


def test_public_view_names_every_image_by_a_gateway_url() -> None:
    internal = "file:///srv/lanes/artifacts/job_1/"
    job = JobState(
        job_id="job_1",
        status="succeeded",
        artifacts=[
            Artifact(
                stage=s, uri=f"{internal}{s}-a1.png", width=8, height=8, model="m", version="v"
            )
            for s in ("draft", "repaired")
        ],
        verification=Verification(
            expected="SALE",
            read="SALE",
            score=1.0,
            passed=True,
            threshold=0.8,
            artifact_uri=f"{internal}repaired-a1.png",
            rendered_uri=f"{internal}draft-a1.png",
        ),
    )
    job = job.model_copy(update={"delivered": job.artifacts[1]})
    data = job.public(BASE)
    url = "https://lanes.example.com/v1/generations/job_1/artifacts/"
    assert [a["uri"] for a in data["artifacts"]] == [f"{url}draft-a1.png", f"{url}repaired-a1.png"]
    assert data["delivered"]["uri"] == f"{url}repaired-a1.png"
    assert data["verification"]["artifact_uri"] == f"{url}repaired-a1.png"
    assert data["verification"]["rendered_uri"] == f"{url}draft-a1.png"
    assert "/srv/lanes" not in str(data) and "file:" not in str(data)
    assert job.artifacts[0].uri.startswith("file:")  # the internal record keeps its URI
