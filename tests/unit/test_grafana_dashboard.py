"""infra/grafana/lanes.json queries only metrics the processes export."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
KINDS = {"Counter", "Gauge", "Histogram", "Summary"}


def exported_series() -> set[str]:
    """Every series name the code's prometheus-client metrics expose, found in the source
    (made directly, or declared as ``Metric(Kind, name, ...)``):
    a Counter ``x`` is ``x_total``, a Histogram ``x`` is ``x_bucket``, ``x_sum``, ``x_count``."""
    series: set[str] = set()
    for path in [*ROOT.glob("services/**/*.py"), *ROOT.glob("consumers/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            kind = getattr(node.func, "id", getattr(node.func, "attr", None))
            first = node.args[0]
            if kind == "Metric" and len(node.args) > 1:  # a declaration: Metric(Kind, name, ...)
                kind, first = getattr(first, "id", None), node.args[1]
            if kind not in KINDS or not isinstance(first, ast.Constant):
                continue
            name = str(first.value)
            if kind == "Counter":
                series.add(name if name.endswith("_total") else f"{name}_total")
            elif kind in ("Histogram", "Summary"):
                series |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            else:
                series.add(name)
    return series


def test_every_dashboard_query_names_a_metric_that_exists() -> None:
    dashboard = json.loads((ROOT / "infra" / "grafana" / "lanes.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [
        v["query"]["query"]
        for v in dashboard["templating"]["list"]
        if "query" in v and isinstance(v["query"], dict)
    ]
    series = exported_series()
    assert (
        "lanes_worker_jobs_total" in series and "lanes_worker_end_to_end_seconds_bucket" in series
    )
    used = {m for e in exprs for m in re.findall(r"\blanes_[a-z0-9_]+", e)}
    assert used and sorted(used - series) == []


def test_the_dashboard_has_the_panels_sres_asked_for() -> None:
    dashboard = json.loads((ROOT / "infra" / "grafana" / "lanes.json").read_text())
    titles = " | ".join(p["title"] for p in dashboard["panels"]).lower()
    for wanted in ("throughput", "p50 / p95", "queue lag", "in flight", "out-of-memory",
                   "batch size", "canary vs stable", "webhook outcomes"):  # fmt: skip
        assert wanted in titles, wanted
    lanes = next(v for v in dashboard["templating"]["list"] if v["name"] == "lane")
    assert lanes["multi"] and lanes["includeAll"]  # per lane, any or all
