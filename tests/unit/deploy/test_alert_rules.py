"""The alerting rules (infra/prometheus/alerts.yaml, generated from the routes file's SLOs)
under promtool, Prometheus's own rule checker and unit-test runner: every alert fires on a
synthetic burn or fault and stays quiet on a healthy series."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.apps.alert_rules import render, rules
from services.config.routes import load_routes

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "infra" / "prometheus" / "alerts.yaml"
CHART_RULES = ROOT / "infra" / "helm" / "lanes" / "files" / "alerts.yaml"
W = {"lane": "draft", "model": "tiny-sd", "version": "tiny-v1"}


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def jobs(ok_per_min: int, failed_per_min: int, minutes: int) -> list[dict[str, str]]:
    return [
        series("lanes_worker_jobs_total", f"0+{ok_per_min}x{minutes}", **W, outcome="ok"),
        series("lanes_worker_jobs_total", f"0+{failed_per_min}x{minutes}", **W, outcome="failed"),
    ]


def latency(fast_per_min: int, total_per_min: int, minutes: int) -> list[dict[str, str]]:
    """Draft jobs, ``fast_per_min`` of ``total_per_min`` within the lane's 0.9 s target."""
    return [
        series(
            "lanes_worker_end_to_end_seconds_bucket", f"0+{fast_per_min}x{minutes}", **W, le="0.9"
        ),  # fmt: skip
        series("lanes_worker_end_to_end_seconds_count", f"0+{total_per_min}x{minutes}", **W),
    ]


# (alert, input series, eval time, the labels it fires with; None: a healthy case, quiet)
CASES: list[tuple[str, list[dict[str, str]], str, dict[str, str] | None]] = [
    # 90% of drafts slower than 0.9 s: 18x the 5% budget, over 1h and 5m.
    ("LanesLatencyBudgetBurn", latency(10, 100, 60), "15m", {"lane": "draft", "severity": "page"}),
    ("LanesLatencyBudgetBurn", latency(99, 100, 60), "15m", None),
    # 10% slow: 2x the budget, not a page; a ticket once it has lasted an hour.
    (
        "LanesLatencyBudgetBurnSlow",
        latency(90, 100, 200),
        "150m",
        {"lane": "draft", "severity": "ticket"},
    ),  # fmt: skip
    ("LanesLatencyBudgetBurnSlow", latency(99, 100, 200), "150m", None),
    ("LanesErrorBudgetBurn", jobs(80, 20, 60), "15m", {"lane": "draft", "severity": "page"}),
    ("LanesErrorBudgetBurn", jobs(999, 1, 60), "15m", None),
    ("LanesErrorBudgetBurnSlow", jobs(98, 2, 200), "150m", {"lane": "draft", "severity": "ticket"}),
    ("LanesErrorBudgetBurnSlow", jobs(999, 1, 200), "150m", None),
    (
        "LanesLaneLagGrowing",
        [series("lanes_lane_consumer_lag", "0+5x60", lane="final")],
        "40m",
        {"lane": "final", "severity": "page"},
    ),  # fmt: skip
    (
        "LanesLaneLagGrowing",
        [series("lanes_lane_consumer_lag", "50x60", lane="final")],
        "40m",
        None,
    ),
    (
        "LanesLaneNoHealthyWorker",
        [series("lanes_lane_replicas", "0x10", lane="final")],
        "5m",
        {"lane": "final", "severity": "page"},
    ),  # fmt: skip
    ("LanesLaneNoHealthyWorker", [series("lanes_lane_replicas", "2x10", lane="final")], "5m", None),
    (
        "LanesWorkerOutOfMemory",
        [series("lanes_worker_oom_total", "0 0 1 1 1 1", **W)],
        "5m",
        {"lane": "draft", "severity": "ticket"},
    ),  # fmt: skip
    ("LanesWorkerOutOfMemory", [series("lanes_worker_oom_total", "0x20", **W)], "15m", None),
    (
        "LanesFallbackRateHigh",
        jobs(90, 0, 60) + [series("lanes_worker_jobs_total", "0+10x60", **W, outcome="rerouted")],
        "40m",
        {"lane": "draft", "severity": "ticket"},
    ),  # fmt: skip
    (
        "LanesFallbackRateHigh",
        jobs(999, 0, 60) + [series("lanes_worker_jobs_total", "0+1x60", **W, outcome="rerouted")],
        "40m",
        None,
    ),  # fmt: skip
    (
        "LanesDeadLetters",
        [series("lanes_consumer_events_total", "0 0 1 1 1", group="lanes-router", outcome="dlq")],
        "4m",
        {"group": "lanes-router", "severity": "ticket"},
    ),  # fmt: skip
    (
        "LanesDeadLetters",
        [series("lanes_consumer_events_total", "0+9x20", group="lanes-router", outcome="ok")],
        "15m",
        None,
    ),  # fmt: skip
    (
        "LanesWebhooksFailing",
        [series("lanes_webhook_attempts_total", "0 0 1 1", result="failed")],
        "3m",
        {"severity": "ticket"},
    ),  # fmt: skip
    (
        "LanesWebhooksFailing",
        [series("lanes_webhook_attempts_total", "0+5x20", result="delivered")],
        "15m",
        None,
    ),
    (
        "LanesProviderPaused",
        [series("lanes_worker_provider_paused", "1x30", **W)],
        "20m",
        {"lane": "draft", "model": "tiny-sd", "severity": "ticket"},
    ),  # fmt: skip
    ("LanesProviderPaused", [series("lanes_worker_provider_paused", "0x30", **W)], "20m", None),
    (
        "LanesCanaryRolledBack",
        [series("lanes_control_auto_rollbacks", "0 0 1 1", lane="final")],
        "3m",
        {"lane": "final", "severity": "ticket"},
    ),  # fmt: skip
    (
        "LanesCanaryRolledBack",
        [series("lanes_control_auto_rollbacks", "0x20", lane="final")],
        "15m",
        None,
    ),  # fmt: skip
    (
        "LanesKafkaUnreachable",
        [series("lanes_kafka_reachable", "0x10", instance="gw-1")],
        "5m",
        {"severity": "page"},
    ),  # fmt: skip
    (
        "LanesKafkaUnreachable",
        [
            series("lanes_kafka_reachable", "0x10", instance="gw-1"),
            series("lanes_kafka_reachable", "1x10", instance="gw-2"),
        ],
        "5m",
        None,
    ),  # fmt: skip
    (
        "LanesKafkaBelowMinISR",
        [series("lanes_kafka_under_min_isr_partitions", "2x10", topic="lanes.requests")],
        "5m",
        {"topic": "lanes.requests", "severity": "page"},
    ),  # fmt: skip
    (
        "LanesKafkaBelowMinISR",
        [series("lanes_kafka_under_min_isr_partitions", "0x10", topic="lanes.requests")],
        "5m",
        None,
    ),  # fmt: skip
    (
        "LanesComponentDown",
        [series("up", "0x10", job="lanes-router", instance="cpu-1:9100")],
        "7m",
        {"job": "lanes-router", "instance": "cpu-1:9100", "severity": "page"},
    ),  # fmt: skip
    (
        "LanesComponentDown",
        [series("up", "1x10", job="lanes-router", instance="cpu-1:9100")],
        "7m",
        None,
    ),  # fmt: skip
]


@pytest.fixture(scope="module")
def promtool() -> str:
    found = os.environ.get("LANES_PROMTOOL") or shutil.which("promtool")
    if not found:
        pytest.skip("promtool not installed (`make prometheus`: Debian's prometheus package)")
    return found


def annotations(rule: dict[str, Any], labels: dict[str, str]) -> dict[str, str]:
    """The rule's annotations as Prometheus renders them for an alert with these labels."""
    return {
        k: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], v)
        for k, v in rule["annotations"].items()
    }


def test_the_rules_files_are_current() -> None:
    text = render(load_routes(None))
    stale = "stale: run `lanes k8s chart` (it writes both)"
    assert RULES.read_text() == text, stale
    assert CHART_RULES.read_text() == text, stale


def test_promtool_checks_the_rules(promtool: str) -> None:
    out = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_fires_on_a_burn_and_stays_quiet_when_healthy(
    promtool: str, tmp_path: Path
) -> None:
    by_name: dict[str, dict[str, Any]] = {}
    for group in rules(load_routes(None))["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                by_name.setdefault(rule["alert"], rule)
    fired = {name for name, _, _, labels in CASES if labels is not None}
    quiet = {name for name, _, _, labels in CASES if labels is None}
    assert fired == set(by_name) and quiet == set(by_name), "every alert needs both cases"
    tests = []
    for name, inputs, at, labels in CASES:
        expected = (
            [] if labels is None
            else [{"exp_labels": labels, "exp_annotations": annotations(by_name[name], labels)}]
        )  # fmt: skip
        tests.append(
            {
                "interval": "1m",
                "input_series": inputs,
                "alert_rule_test": [{"eval_time": at, "alertname": name, "exp_alerts": expected}],
            }
        )
    suite = tmp_path / "alerts.test.yaml"
    suite.write_text(
        yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "30s", "tests": tests})
    )
    out = subprocess.run([promtool, "test", "rules", str(suite)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert "SUCCESS" in out.stdout


def test_every_alert_has_a_runbook_section_its_annotation_links_to() -> None:
    page = (ROOT / "docs" / "runbooks.md").read_text()
    headings = set(re.findall(r"^## (\w+)$", page, re.M))
    for group in rules(load_routes(None))["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["alert"] in headings, f"docs/runbooks.md lacks ## {rule['alert']}"
                anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
                assert anchor == rule["alert"].lower()
