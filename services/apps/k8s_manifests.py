"""Kubernetes manifests derived from the routes file, so they never drift from it:
a GPU Deployment per lane (one worker process per GPU), KEDA ScaledObjects on each lane's
consumer-group lag, and the CPU components. `lanes k8s manifests > infra/k8s/lanes.yaml`."""

from __future__ import annotations

from typing import Any

import yaml

from schemas.topics import Groups, Topics
from services.apps.registry import CONSUMERS, GATEWAY, workers
from services.config.routes import Routes

__all__ = ["manifests", "render"]

IMAGE = "ghcr.io/example/lanes:0.1.0"
METRICS_PORT = 9100
STATE_DIR = "/var/lib/lanes"
MODELS_DIR = "/models"
KAFKA_BOOTSTRAP = "kafka.lanes.svc:9093"
KAFKA_CA_DIR = "/etc/lanes/kafka-ca"


# A hosted lane's worker: an event loop with many HTTP calls in flight, PNG encoding.
HOSTED_WORKER_RESOURCES = {
    "requests": {"cpu": "500m", "memory": "768Mi"},
    "limits": {"memory": "2Gi"},
}


def _env(extra: dict[str, str] | None = None) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "LANES_PROFILE", "value": "production"},
        {"name": "LANES_KAFKA_BOOTSTRAP", "value": KAFKA_BOOTSTRAP},
        # SCRAM over TLS, the cluster's CA from the Secret lanes-kafka-ca; each component's
        # own principal (below).
        {"name": "LANES_KAFKA_SECURITY_PROTOCOL", "value": "SASL_SSL"},
        {"name": "LANES_KAFKA_SASL_MECHANISM", "value": "SCRAM-SHA-512"},
        {"name": "LANES_KAFKA_CA_FILE", "value": f"{KAFKA_CA_DIR}/ca.crt"},
        {"name": "LANES_ROUTES_FILE", "value": "/etc/lanes/routes.yaml"},
        {"name": "LANES_METRICS_HOST", "value": "0.0.0.0"},
        {"name": "LANES_METRICS_PORT", "value": str(METRICS_PORT)},
        # The process's own views (SQLite) on the pod's scratch disk; job history lives in
        # Kafka and images in the object store, so a rescheduled pod only catches up.
        {"name": "LANES_STATE_DIR", "value": STATE_DIR},
        # Static group membership under the pod's name: a crashed container, restarted in
        # its pod, takes its partitions back without a rebalance.
        {"name": "LANES_INSTANCE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        # A replicated cluster: acks=all holds with one broker lost.
        {"name": "LANES_TOPIC_REPLICATION_FACTOR", "value": "3"},
        {"name": "LANES_TOPIC_MIN_INSYNC_REPLICAS", "value": "2"},
    ]
    env += [{"name": k, "value": v} for k, v in (extra or {}).items()]
    # The object store: every image goes there, none stays on a pod's disk. Credentials
    # are optional for workload identity (IRSA, GKE): boto3's own chain finds them.
    env += [
        {
            "name": name,
            "valueFrom": {
                "secretKeyRef": {"name": "lanes-object-store", "key": key, "optional": optional}
            },
        }
        for name, key, optional in (
            ("LANES_ARTIFACTS", "artifacts", False),
            ("LANES_S3_ENDPOINT_URL", "endpoint-url", True),
            ("LANES_S3_REGION", "region", True),
            ("LANES_S3_ACCESS_KEY_ID", "access-key-id", True),
            ("LANES_S3_SECRET_ACCESS_KEY", "secret-access-key", True),
        )
    ]
    env += [
        {
            "name": name,
            "valueFrom": {
                "secretKeyRef": {
                    "name": "lanes-secrets",
                    "key": key,
                }
            },
        }
        for name, key in (
            ("LANES_WEBHOOK_SECRET", "webhook-secret"),
            ("LANES_OPS_KEY", "ops-key"),
            ("LANES_ARTIFACT_URL_KEY", "artifact-url-key"),
        )
    ]
    # lanes.control records are trusted only when the control plane signed them.
    env.append(
        {
            "name": "LANES_CONTROL_VERIFY_KEYS",
            "valueFrom": {"secretKeyRef": {"name": "lanes-control", "key": "verify-keys"}},
        }
    )
    return env


def _kafka_principal(name: str) -> list[dict[str, Any]]:
    """The component's own Kafka user (SCRAM), from the Secret lanes-kafka-<name>."""
    return [
        {
            "name": var,
            "valueFrom": {"secretKeyRef": {"name": f"lanes-kafka-{name}", "key": key}},
        }
        for var, key in (("LANES_KAFKA_USERNAME", "username"), ("LANES_KAFKA_PASSWORD", "password"))
    ]


def _control_key(signs: bool) -> list[dict[str, Any]]:
    """Only the control plane holds the private key that signs lanes.control."""
    if not signs:
        return []
    ref = {"secretKeyRef": {"name": "lanes-control", "key": "signing-key"}}
    return [{"name": "LANES_CONTROL_SIGNING_KEY", "valueFrom": ref}]


def _deployment(
    name: str,
    args: list[str],
    *,
    replicas: int,
    resources: dict[str, Any],
    env: dict[str, str] | None = None,
    grace_s: int = 30,
    port: int = METRICS_PORT,
    models: bool = False,
    secret_env: list[str] | None = None,
    signs_control: bool = False,
) -> dict[str, Any]:
    probe = {"httpGet": {"path": "/readyz", "port": port}, "periodSeconds": 5}
    # Hosted engines' keys, from the Secret lanes-provider-keys (one key per variable name).
    keys = [
        {
            "name": k,
            "valueFrom": {
                "secretKeyRef": {"name": "lanes-provider-keys", "key": k, "optional": True}
            },
        }
        for k in secret_env or []
    ]
    container: dict[str, Any] = {
        "name": name,
        "image": IMAGE,
        "args": args,
        "env": _env(env) + _kafka_principal(name) + keys + _control_key(signs_control),
        "resources": resources,
        "readinessProbe": probe,
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 10},
        "ports": [{"name": "http", "containerPort": port}],
        "volumeMounts": [
            {"name": "routes", "mountPath": "/etc/lanes"},
            {"name": "state", "mountPath": STATE_DIR},
            {"name": "kafka-ca", "mountPath": KAFKA_CA_DIR, "readOnly": True},
        ],
    }
    volumes: list[dict[str, Any]] = [
        {"name": "routes", "configMap": {"name": "lanes-routes"}},
        {"name": "state", "emptyDir": {"sizeLimit": "20Gi"}},
        {"name": "kafka-ca", "secret": {"secretName": "lanes-kafka-ca"}},
    ]
    if models:  # checkpoints, read-only, shared by every worker of the fleet
        container["volumeMounts"].append(
            {"name": "models", "mountPath": MODELS_DIR, "readOnly": True}
        )
        volumes.append(
            {
                "name": "models",
                "persistentVolumeClaim": {"claimName": "lanes-models", "readOnly": True},
            }
        )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"lanes-{name}", "labels": {"app.kubernetes.io/part-of": "lanes"}},
        "spec": {
            "replicas": replicas,
            # Rolling restarts one pod at a time: the lane never stops serving.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "selector": {"matchLabels": {"app": f"lanes-{name}"}},
            "template": {
                "metadata": {
                    "labels": {"app": f"lanes-{name}"},
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(port),
                    },
                },
                "spec": {
                    "terminationGracePeriodSeconds": grace_s,
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def manifests(
    routes: Routes,
    routes_yaml: str,
    *,
    memory_gb: float = 8.0,
    max_replicas: int = 16,
    lag_threshold: int = 20,
) -> list[dict[str, Any]]:
    topics = Topics()
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "lanes-routes"},
            "data": {"routes.yaml": routes_yaml},
        }
    ]
    docs.append(
        _deployment(
            "gateway",
            ["run", "gateway"],
            replicas=2,
            port=8000,
            env={"LANES_GATEWAY_HOST": "0.0.0.0"},
            resources=GATEWAY.resources,
        )
    )
    for comp in CONSUMERS:
        docs.append(
            _deployment(
                comp.name,
                ["run", *comp.run_args],
                replicas=1,
                resources=comp.resources,
                signs_control=comp.name == "control",
            )
        )
    # KEDA reads the lanes' lag as its own principal (Describe on groups and topics).
    docs.append(
        {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "TriggerAuthentication",
            "metadata": {"name": "lanes-keda-kafka"},
            "spec": {
                "secretTargetRef": [
                    {"parameter": parameter, "name": "lanes-kafka-keda", "key": key}
                    for parameter, key in (
                        ("sasl", "sasl"),  # scram_sha512
                        ("username", "username"),
                        ("password", "password"),
                        ("tls", "tls"),  # enable
                        ("ca", "ca.crt"),
                    )
                ]
            },
        }
    )
    budget = f"{memory_gb * 0.9:.1f}"  # headroom under the card for the CUDA context
    groups = Groups()
    provider_keys = sorted({m.api_key_env for m in routes.models.values() if m.api_key_env})
    for worker in workers(routes):
        lane = worker.lane
        assert lane is not None
        spec = routes.models[routes.lanes[lane].model]
        if spec.hosted:  # HTTP calls: no GPU, no checkpoints; the provider's key
            docs.append(
                _deployment(
                    worker.name,
                    ["run", *worker.run_args, "--device", "cpu"],
                    replicas=1,
                    grace_s=60,
                    env={"LANES_DRAIN_TIMEOUT_S": "45"},
                    resources=HOSTED_WORKER_RESOURCES,
                    secret_env=provider_keys,
                )
            )
        else:
            docs.append(
                _deployment(
                    worker.name,
                    ["run", *worker.run_args, "--device", "cuda"],
                    replicas=1,
                    grace_s=60,  # > LANES_DRAIN_TIMEOUT_S: SIGTERM drains in-flight jobs first
                    models=True,
                    env={
                        "LANES_MODELS_DIR": MODELS_DIR,
                        "LANES_DEVICE": "cuda",
                        "LANES_MEMORY_BUDGET_GB": budget,
                        "LANES_DRAIN_TIMEOUT_S": "45",
                    },
                    resources=worker.resources,
                    secret_env=provider_keys,  # a canary may move a local lane to a hosted model
                )
            )
        docs.append(
            {
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "ScaledObject",
                "metadata": {"name": f"lanes-worker-{lane}"},
                "spec": {
                    "scaleTargetRef": {"name": f"lanes-worker-{lane}"},
                    "minReplicaCount": 1,
                    "maxReplicaCount": max_replicas,
                    "cooldownPeriod": 120,
                    # A spilling lane's burst overflow is its backlog too (KEDA takes the max).
                    "triggers": [
                        {
                            "type": "kafka",
                            "authenticationRef": {"name": "lanes-keda-kafka"},
                            "metadata": {
                                "bootstrapServers": KAFKA_BOOTSTRAP,
                                "consumerGroup": group,
                                "topic": topic,
                                "lagThreshold": str(lag_threshold),
                                "offsetResetPolicy": "earliest",
                            },
                        }
                        for group, topic in [(groups.lane(lane), topics.lane(lane))]
                        + (
                            [(groups.spill(lane), topics.spill(lane))]
                            if routes.lanes[lane].spill
                            else []
                        )
                    ],
                },
            }
        )
    return docs


def render(routes: Routes, routes_yaml: str) -> str:
    header = (
        "# Generated by `lanes k8s manifests` from the routes file; edit the routes file\n"
        "# and regenerate. Secrets: create `lanes-secrets` (webhook-secret, ops-key,\n"
        "# artifact-url-key), `lanes-object-store` (artifacts=s3://bucket/prefix; optional\n"
        "# endpoint-url, region, access-key-id, secret-access-key), `lanes-control`\n"
        "# (verify-keys; signing-key, mounted in the control plane only: `lanes keys\n"
        "# control-keypair`), `lanes-kafka-ca` (ca.crt), one `lanes-kafka-<component>`\n"
        "# (username, password) per component (`lanes kafka acls --print` lists their\n"
        "# rights) and `lanes-kafka-keda` (sasl, username, password, tls, ca.crt).\n"
        "# Workers mount the checkpoints from the PVC `lanes-models` (ReadOnlyMany) at\n"
        "# /models. Needs the\n"
        "# NVIDIA device plugin and KEDA in the cluster.\n"
    )
    return header + yaml.safe_dump_all(manifests(routes, routes_yaml), sort_keys=False)
