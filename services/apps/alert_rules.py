"""The Prometheus alerting rules, generated from the routes file (each lane's SLO) so that
the targets live in one place: `lanes alerts rules` writes infra/prometheus/alerts.yaml
(the default routes) and the chart's copy; for your own routes file, run it with
LANES_ROUTES_FILE set and give the chart the result (monitoring.prometheusRule.rules).

The SLO alerts are the Google SRE workbook's multiwindow, multi-burn-rate alerts (chapter
"Alerting on SLOs"): page when 2% of the 30-day budget burns in an hour (14.4x over 1h and
5m) or 5% in six hours (6x over 6h and 30m); ticket when 10% burns in three days (1x over 3d
and 6h). Every alert links to its runbook in docs/runbooks.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from services.config.routes import Routes

__all__ = ["rules", "render", "RUNBOOK", "WINDOWS"]

RUNBOOK = "https://github.com/lanes/lanes/blob/main/docs/runbooks.md#{anchor}"
WINDOWS = ("5m", "30m", "1h", "6h", "3d")
# (long window, short window, burn rate, severity)
BURNS = (("1h", "5m", 14.4, "page"), ("6h", "30m", 6.0, "page"), ("3d", "6h", 1.0, "ticket"))


def _bucket(value: float) -> str:
    """The ``le`` label prometheus-client writes for a bucket boundary (1.2, 2.0)."""
    return repr(float(value))


def _alert(
    name: str, expr: str, severity: str, summary: str, for_: str | None = None, **labels: str
) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if for_:
        rule["for"] = for_
    rule["labels"] = {"severity": severity, **labels}
    rule["annotations"] = {
        "summary": summary,
        "runbook_url": RUNBOOK.format(anchor=name.lower()),
    }
    return rule


def _recording(routes: Routes) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for w in WINDOWS:
        # Failed jobs over the jobs that ended (a rerouted job is still being served).
        out.append(
            {
                "record": f"lanes:lane_errors:ratio_rate{w}",
                "expr": (
                    f'sum by (lane) (rate(lanes_worker_jobs_total{{outcome="failed"}}[{w}]))'
                    f" / sum by (lane) "
                    f'(rate(lanes_worker_jobs_total{{outcome=~"ok|failed"}}[{w}]))'
                ),
            }
        )
        for lane, spec in sorted(routes.lanes.items()):
            # Jobs slower than the lane's target over all its jobs, from the histogram.
            le = _bucket(spec.slo.latency_s)
            sel = f'lane="{lane}"'
            out.append(
                {
                    "record": f"lanes:lane_slow:ratio_rate{w}",
                    "labels": {"lane": lane},
                    "expr": (
                        f'1 - (sum(rate(lanes_worker_end_to_end_seconds_bucket{{{sel},le="{le}"}}'
                        f"[{w}])) / sum(rate(lanes_worker_end_to_end_seconds_count{{{sel}}}[{w}])))"
                    ),
                }
            )
    return out


def _burn_alerts(routes: Routes) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for lane, spec in sorted(routes.lanes.items()):
        for kind, series, objective, what in (
            ("Latency", "lane_slow", spec.slo.latency_objective,
             f"slower than {spec.slo.latency_s}s"),
            ("Error", "lane_errors", spec.slo.success_objective, "failed"),
        ):  # fmt: skip
            budget = round(1 - objective, 6)
            for severity in ("page", "ticket"):
                terms = [
                    f'(lanes:{series}:ratio_rate{long}{{lane="{lane}"}} > {rate * budget:g}'
                    f' and lanes:{series}:ratio_rate{short}{{lane="{lane}"}} > {rate * budget:g})'
                    for long, short, rate, sev in BURNS
                    if sev == severity
                ]
                name = f"Lanes{kind}BudgetBurn" + ("" if severity == "page" else "Slow")
                out.append(
                    _alert(
                        name,
                        " or ".join(terms),
                        severity,
                        f"lane {lane}: jobs {what} are burning the {objective:.2%} SLO's budget "
                        + ("fast" if severity == "page" else "steadily"),
                        for_="2m" if severity == "page" else "1h",
                        lane=lane,
                    )
                )
    return out


def _fleet_alerts() -> list[dict[str, Any]]:
    return [
        _alert(
            "LanesLaneLagGrowing",
            "lanes_lane_consumer_lag > 20 and deriv(lanes_lane_consumer_lag[10m]) > 0",
            "page",
            "lane {{ $labels.lane }}: over 20 jobs waiting and the backlog keeps growing",
            for_="10m",
        ),
        _alert(
            "LanesLaneNoHealthyWorker",
            "lanes_lane_replicas == 0",
            "page",
            "lane {{ $labels.lane }} has no live worker: its jobs wait in Kafka",
            for_="2m",
        ),
        _alert(
            "LanesWorkerOutOfMemory",
            "sum by (lane) (increase(lanes_worker_oom_total[15m])) > 0",
            "ticket",
            "lane {{ $labels.lane }}: out-of-memory splits or fallbacks in the last 15 minutes",
        ),
        _alert(
            "LanesFallbackRateHigh",
            'sum by (lane) (rate(lanes_worker_jobs_total{outcome="rerouted"}[15m]))'
            " / sum by (lane) (rate(lanes_worker_jobs_total[15m])) > 0.05",
            "ticket",
            "lane {{ $labels.lane }}: over 5% of jobs rerouted to a fallback lane",
            for_="15m",
        ),
        _alert(
            "LanesDeadLetters",
            'sum by (group) (increase(lanes_consumer_events_total{outcome="dlq"}[15m])) > 0',
            "ticket",
            "{{ $labels.group }} dead-lettered events it could not process (lanes.dlq)",
        ),
        _alert(
            "LanesWebhooksFailing",
            'sum(increase(lanes_webhook_attempts_total{result="failed"}[15m])) > 0',
            "ticket",
            "webhooks failed for good in the last 15 minutes (lanes.webhooks.dlq)",
        ),
        _alert(
            "LanesProviderPaused",
            "max by (lane, model) (lanes_worker_provider_paused) > 0",
            "ticket",
            "lane {{ $labels.lane }}: hosted provider for {{ $labels.model }} sends no calls",
            for_="10m",
        ),
        _alert(
            "LanesCanaryRolledBack",
            "sum by (lane) (increase(lanes_control_auto_rollbacks[15m])) > 0",
            "ticket",
            "lane {{ $labels.lane }}: the control plane rolled a canary back",
        ),
        _alert(
            "LanesKafkaUnreachable",
            "max(lanes_kafka_reachable) == 0",
            "page",
            "no gateway reaches a Kafka broker: requests cannot be accepted",
            for_="2m",
        ),
        _alert(
            "LanesKafkaBelowMinISR",
            "max by (topic) (lanes_kafka_under_min_isr_partitions) > 0",
            "page",
            "partitions of {{ $labels.topic }} below min.insync.replicas: "
            "acks=all writes to them fail",
            for_="2m",
        ),
        _alert(
            "LanesComponentDown",
            'up{job=~".*lanes.*"} == 0',
            "page",
            "{{ $labels.instance }} has not answered /metrics for 5 minutes",
            for_="5m",
        ),
    ]


def rules(routes: Routes) -> dict[str, Any]:
    return {
        "groups": [
            {"name": "lanes.slo.recording", "interval": "30s", "rules": _recording(routes)},
            {"name": "lanes.slo.alerts", "rules": _burn_alerts(routes)},
            {"name": "lanes.fleet.alerts", "rules": _fleet_alerts()},
        ]
    }


def render(routes: Routes) -> str:
    header = (
        "# Generated by `lanes alerts rules` from the routes file's lane SLOs: do not edit.\n"
        "# Tests: infra/prometheus/alerts.test.yaml (promtool test rules).\n"
    )
    return header + yaml.safe_dump(rules(routes), sort_keys=False, width=200)


def write(routes: Routes, *paths: Path) -> list[Path]:
    text = render(routes)
    for path in paths:
        path.write_text(text)
    return list(paths)
