"""The Helm chart (infra/helm/lanes): the one way the Kubernetes manifests are made. Each
test runs the real helm binary (LANES_HELM; `make test` builds it from its Go module)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.apps.helm_chart import CHART_DIR, components_file
from services.apps.registry import CONSUMERS
from services.config.routes import load_routes, routes_text

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "infra" / "helm" / "examples"
SEED_MIX = ROOT / "infra" / "routes" / "seed-mix.yaml"
CRDS = {"ScaledObject", "TriggerAuthentication", "PodMonitor", "PrometheusRule"}


@pytest.fixture(scope="module")
def helm() -> str:
    found = os.environ.get("LANES_HELM") or shutil.which("helm")
    if not found or not Path(found).exists():
        pytest.skip("helm not found: `make helm` builds it (make test sets LANES_HELM)")
    return found


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)


def template(helm: str, *args: str) -> list[dict[str, Any]]:
    out = run_helm(helm, "template", "lanes", str(CHART_DIR), *args)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def production(helm: str) -> list[dict[str, Any]]:
    return template(
        helm, "-f", str(EXAMPLES / "production.yaml"), "--set-file", f"routes={SEED_MIX}"
    )


def validate(docs: list[dict[str, Any]]) -> None:
    import kubernetes_validate

    for doc in docs:
        if doc["kind"] not in CRDS:  # KEDA's and the Prometheus Operator's CRDs
            # Strict: an unknown or misplaced field fails as well as a wrong type.
            kubernetes_validate.validate(doc, "1.31.0", strict=True)


def deployments(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}


def container(dep: dict[str, Any]) -> dict[str, Any]:
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return c  # type: ignore[no-any-return]


def test_generated_chart_files_match_the_registry_and_the_default_routes() -> None:
    files = CHART_DIR / "files"
    stale = "stale: run `lanes k8s chart`"
    assert yaml.safe_load((files / "components.yaml").read_text()) == components_file(), stale
    assert (files / "default-routes.yaml").read_text() == routes_text(None), stale


@pytest.mark.parametrize("example", ["minimal", "production"])
def test_lint_strict_passes_on_the_examples(helm: str, example: str) -> None:
    args = ["lint", "--strict", str(CHART_DIR), "-f", str(EXAMPLES / f"{example}.yaml")]
    if example == "production":
        args += ["--set-file", f"routes={SEED_MIX}"]
    out = run_helm(helm, *args)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


def test_minimal_values_give_valid_manifests_a_worker_and_a_scaler_per_lane(helm: str) -> None:
    docs = template(helm, "-f", str(EXAMPLES / "minimal.yaml"))
    validate(docs)
    deps = deployments(docs)
    routes = load_routes(None)
    expected = {"lanes-gateway"} | {f"lanes-{c.name}" for c in CONSUMERS}
    expected |= {f"lanes-worker-{lane}" for lane in routes.lanes}
    assert set(deps) == expected
    for lane in routes.lanes:
        c = container(deps[f"lanes-worker-{lane}"])
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert c["args"] == ["worker", "--lane", lane, "--device", "cuda"]
        (scaler,) = [
            d
            for d in docs
            if d["kind"] == "ScaledObject"
            and d["spec"]["scaleTargetRef"]["name"] == f"lanes-worker-{lane}"
        ]
        meta = scaler["spec"]["triggers"][0]["metadata"]
        assert (meta["consumerGroup"], meta["topic"]) == (
            f"lanes-lane-{lane}",
            f"lanes.lane.{lane}",
        )
        assert scaler["spec"]["maxReplicaCount"] <= 6  # the default lane partitions
    # The routes the pods read are the routes file's.
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert yaml.safe_load(cm["data"]["routes.yaml"]) == yaml.safe_load(routes_text(None))


def test_images_named_are_the_ones_make_image_tags(helm: str) -> None:
    tags = subprocess.run(
        ["bash", str(ROOT / "infra" / "images" / "build.sh"), "--print-tags"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    cpu, gpu = tags
    docs = template(helm, "-f", str(EXAMPLES / "minimal.yaml"), "--set-file", f"routes={SEED_MIX}")
    images = {container(d)["image"] for d in deployments(docs).values()}
    job = [d for d in docs if d["kind"] == "Job"]
    images |= {d["spec"]["template"]["spec"]["containers"][0]["image"] for d in job}
    assert images == {cpu, gpu}


def test_production_values_keep_secrets_by_reference_and_place_each_pod(helm: str) -> None:
    docs = production(helm)
    validate(docs)
    routes = load_routes(SEED_MIX)
    deps = deployments(docs)
    for name, dep in deps.items():
        pod = dep["spec"]["template"]["spec"]
        c = container(dep)
        env = {e["name"]: e for e in c["env"]}
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        # Kafka: SCRAM over TLS as the component's own principal, the CA from a Secret.
        assert env["LANES_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
        user = env["LANES_KAFKA_USERNAME"]["valueFrom"]["secretKeyRef"]
        assert user["name"] == name.replace("lanes-", "lanes-kafka-", 1)
        assert "value" not in env["LANES_KAFKA_PASSWORD"]
        for secret in ("LANES_WEBHOOK_SECRET", "LANES_OPS_KEY", "LANES_ARTIFACT_URL_KEY"):
            assert env[secret]["valueFrom"]["secretKeyRef"]["name"] == "lanes-secrets"
        assert ("LANES_CONTROL_SIGNING_KEY" in env) is (name == "lanes-control")
        assert env["LANES_ARTIFACTS"]["value"] == "s3://lanes-images/prod"
        assert "LANES_ARTIFACT_DIR" not in env
        mounts = {m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes["state"]  # views only: rebuilt from Kafka
        if not name.startswith("lanes-worker-"):
            assert pod["nodeSelector"] == {"node.kubernetes.io/pool": "cpu"}
            assert "models" not in mounts
            continue
        lane = name.removeprefix("lanes-worker-")
        hosted = routes.models[routes.lanes[lane].model].hosted
        assert ("nvidia.com/gpu" in c["resources"]["limits"]) is not hosted
        assert ("models" in mounts) is not hosted
        assert c["image"].endswith("lanes-cpu:0.1.0" if hosted else "lanes-gpu:0.1.0")
        assert pod["nodeSelector"] == (
            {"node.kubernetes.io/pool": "cpu"} if hosted else {"nvidia.com/gpu.present": "true"}
        )
        for key in ("LANES_GEMINI_API_KEY", "LANES_IDEOGRAM_API_KEY"):
            assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "lanes-provider-keys"
    assert container(deps["lanes-worker-final"])["resources"]["limits"]["memory"] == "16Gi"
    kinds = {d["kind"] for d in docs}
    assert {"PrometheusRule", "PodMonitor", "NetworkPolicy", "PodDisruptionBudget"} <= kinds
    scalers = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "ScaledObject"}
    assert scalers["lanes-worker-draft"]["maxReplicaCount"] == 48
    assert scalers["lanes-worker-final"]["maxReplicaCount"] == 24


MINIMAL = ["--set", "kafka.bootstrap=kafka:9093", "--set", "objectStore.artifacts=s3://lanes/x"]


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (
            ["--set", "objectStore.artifacts=s3://lanes/x", "--set", "gateway.publicUrl=https://x"],
            "kafka/bootstrap",
        ),
        (
            ["--set", "kafka.bootstrap=kafka:9093", "--set", "gateway.publicUrl=https://x"],
            "objectStore/artifacts",
        ),
        (MINIMAL, "gateway/publicUrl"),
        (
            [*MINIMAL, "--set", "gateway.publicUrl=https://x", "--set", "kafka.bootstrap=kafka"],
            "kafka/bootstrap",
        ),
        (
            [
                *MINIMAL,
                "--set",
                "gateway.publicUrl=https://x",
                "--set",
                "components.router.replicas=two",
            ],
            "components/router/replicas",
        ),
        ([*MINIMAL, "--set", "gateway.publicUrl=https://x", "--set", "workers.gpu=1"], "gpu"),
    ],
)
def test_a_wrong_or_missing_value_fails_at_install_naming_it(
    helm: str, args: list[str], names: str
) -> None:
    out = run_helm(helm, "template", "lanes", str(CHART_DIR), *args)
    assert out.returncode != 0
    assert names in out.stderr, out.stderr


def test_the_chart_refuses_more_replicas_than_partitions(helm: str) -> None:
    base = [*MINIMAL, "--set", "gateway.publicUrl=https://images.example.com"]
    out = run_helm(helm, "template", "lanes", str(CHART_DIR), *base, "--set", "keda.maxReplicas=16")
    assert out.returncode != 0
    assert "keda.maxReplicas=16 for lane" in out.stderr and "6 partitions" in out.stderr
    raised = ["--set", "keda.maxReplicas=16", "--set", "kafka.partitions.lanes=16"]
    assert run_helm(helm, "template", "lanes", str(CHART_DIR), *base, *raised).returncode == 0
    out = run_helm(
        helm, "template", "lanes", str(CHART_DIR), *base, "--set", "components.router.replicas=8"
    )
    assert out.returncode != 0 and "components.router.replicas=8" in out.stderr
    out = run_helm(
        helm, "template", "lanes", str(CHART_DIR), *base, "--set", "components.control.replicas=2"
    )
    assert out.returncode != 0 and "at most 1 members" in out.stderr
