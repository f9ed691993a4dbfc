"""A/B harness: the same prompts through the real pipeline on two (or more) engines.

Each engine gets its own lane over its own uuid topics (so nothing else is mixed in),
with typography repair off so that the engines' own text rendering is compared. Engines
run one after the other, each with the machine to itself. Writes an HTML report with the
image grid (images inlined), typography pass rate, latency p50/p95, cost per image (the
routes file's price table) and peak memory, and the same table in Markdown beside it.
Engines may be local or hosted (a hosted one needs its key in the variable it names).

    lanes ab --engines tiny-sd,tiny-sd-b --prompts infra/ab/prompts.txt --out results/ab.html
"""

from __future__ import annotations

import asyncio
import base64
import html
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from producers.client import GenerationClient
from schemas.records import JobState
from schemas.spec import GenerationSpec
from schemas.topics import Topics
from services.apps.bench.stats import pct
from services.apps.in_process import LocalStack
from services.config.routes import load_routes
from services.config.settings import Settings
from services.kafka.compacted_view import CompactedView
from services.storage.artifacts import ArtifactStore, open_store

__all__ = ["EngineRun", "read_prompts", "run_ab", "render_report"]


@dataclass
class EngineRun:
    engine: str
    version: str
    jobs: list[JobState] = field(default_factory=list)
    peak_memory_bytes: float = 0.0
    provider: str = "diffusers"

    def costs(self) -> list[float]:
        return [j.cost_usd for j in self.jobs if j.cost_usd is not None]

    def cost_per_image(self) -> float | None:
        """Mean cost of the jobs that rendered (None: the model has no price)."""
        costs = self.costs()
        return sum(costs) / len(costs) if costs else None

    def latencies(self) -> list[float]:
        return [
            (j.finished_at - j.created_at).total_seconds()
            for j in self.jobs
            if j.finished_at and j.created_at
        ]

    def pass_rate(self) -> float | None:
        checked = [j for j in self.jobs if j.verification is not None]
        return sum(j.verification.passed for j in checked) / len(checked) if checked else None  # type: ignore[union-attr]


def read_prompts(path: Path) -> list[str]:
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"no prompts in {path}")
    return prompts


def _routes_for(settings: Settings, engine: str, intent: str, workdir: Path) -> Path:
    base = load_routes(settings.routes_file)
    engine = base.resolve_model(engine)[0]
    if engine not in base.models:
        raise ValueError(f"unknown engine {engine!r}; the routes file has {sorted(base.models)}")
    template = base.lane_for(intent)[1]
    lane = template.model_dump(
        mode="json",
        exclude={
            "cascade",
            "fallback_lane",
            "refine_strength",
            "spill",
            "assists",
            "backfills",
            "on_safety",
        },
    )
    lane.update(model=engine, typography={"repair": False})
    doc = {
        "models": {
            name: m.model_dump(mode="json", exclude_none=True) for name, m in base.models.items()
        },
        "lanes": {"ab": lane},
        "intents": {"draft": "ab", "final": "ab"},
    }
    path = workdir / f"routes-{engine}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def _run_engine(
    settings: Settings,
    engine: str,
    prompts: list[str],
    intent: str,
    workdir: Path,
    timeout_s: float,
) -> EngineRun:
    ns = f"ab{uuid.uuid4().hex[:8]}."
    routes_file = _routes_for(settings, engine, intent, workdir)
    s = settings.model_copy(
        update={"topic_prefix": ns, "group_prefix": ns, "routes_file": routes_file}
    )
    stack = LocalStack(s, with_webhooks=False)
    await stack.start()
    view: CompactedView[JobState] = CompactedView(s, Topics(ns).jobs, JobState.model_validate_json)
    follower = asyncio.create_task(view.follow())
    try:
        await stack.wait_workers_ready()
        async with GenerationClient(s) as client:
            ids = [await client.submit(GenerationSpec(prompt=p, intent=intent)) for p in prompts]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not all(view.items.get(i) is not None and view.items[i].terminal for i in ids):
            stack.check_alive()
            if loop.time() > deadline:
                raise TimeoutError(f"engine {engine}: jobs not finished in {timeout_s}s")
            await asyncio.sleep(0.2)
        worker = stack.workers["ab"]
        peak = worker.registry.get_sample_value(
            "lanes_worker_peak_memory_bytes",
            {
                "lane": "ab",
                "model": engine,
                "version": worker.models.stable.version,
                "device": s.worker.device,
            },
        )
        stable = worker.models.engines[worker.models.stable]
        return EngineRun(
            engine,
            worker.models.stable.version,
            [view.items[i] for i in ids],
            peak or 0.0,
            provider=stable.provider,
        )
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await stack.stop()


async def run_ab(
    settings: Settings,
    engines: list[str],
    prompts: list[str],
    out: Path,
    intent: str = "draft",
    timeout_s: float = 600,
) -> Path:
    from services.kafka.local_broker import local_kafka

    with (
        tempfile.TemporaryDirectory(prefix="lanes-ab-") as tmp,
        local_kafka(settings, Path(tmp)) as bootstrap,
    ):
        s = settings.model_copy(update={"kafka_bootstrap": bootstrap})
        runs = [await _run_engine(s, e, prompts, intent, Path(tmp), timeout_s) for e in engines]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_report(runs, prompts, open_store(s)))
        out.with_suffix(".md").write_text(render_markdown(runs, prompts))
    return out


def _summary(r: EngineRun) -> list[str]:
    rate, cost = r.pass_rate(), r.cost_per_image()
    lat = r.latencies()
    return [
        f"{r.engine} ({r.version})",
        r.provider,
        str(len(r.jobs)),
        str(sum(j.status == "succeeded" for j in r.jobs)),
        "n/a" if rate is None else f"{rate:.0%}",
        "n/a" if not lat else f"{pct(lat, 50):.3f}",
        "n/a" if not lat else f"{pct(lat, 95):.3f}",
        "n/a" if cost is None else f"{cost:.4f}",
        f"{sum(r.costs()):.4f}" if r.costs() else "n/a",
        "n/a" if r.provider != "diffusers" else f"{r.peak_memory_bytes / 2**20:.0f}",
    ]


SUMMARY_HEADS = [
    "engine",
    "provider",
    "jobs",
    "succeeded",
    "typography pass rate",
    "latency p50 s",
    "latency p95 s",
    "cost per image USD",
    "total USD",
    "peak memory MB",
]


def render_markdown(runs: list[EngineRun], prompts: list[str]) -> str:
    rows = [SUMMARY_HEADS, ["---"] * len(SUMMARY_HEADS), *(_summary(r) for r in runs)]
    table = "\n".join("| " + " | ".join(row) + " |" for row in rows)
    return (
        f"# Lanes A/B report\n\nThe same {len(prompts)} prompts on each engine, through the "
        "real pipeline, one engine at a time; typography repair off. Cost: the routes file's "
        "price table (hosted: per image; local: GPU time at gpu_usd_per_hour).\n\n"
        f"{table}\n"
    )


def _img(store: ArtifactStore, job: JobState) -> str:
    artifact = job.delivered or (job.artifacts[-1] if job.artifacts else None)
    if artifact is None:
        return f"<em>{html.escape(job.error or job.status)}</em>"
    data = base64.b64encode(store.get(artifact.uri)).decode()
    caption = ""
    if job.verification is not None:
        v = job.verification
        caption = (
            f"<br><small>read {html.escape(repr(v.read))} · score {v.score:.2f} · "
            f"{'pass' if v.passed else 'fail'}</small>"
        )
    return f'<img src="data:image/png;base64,{data}" width="{min(artifact.width, 256)}">{caption}'


def render_report(runs: list[EngineRun], prompts: list[str], store: ArtifactStore) -> str:
    summary = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _summary(r)) + "</tr>" for r in runs
    )
    heads = "".join(f"<th>{html.escape(r.engine)}</th>" for r in runs)
    grid = "".join(
        f"<tr><td class=p>{html.escape(p)}</td>"
        + "".join(f"<td>{_img(store, r.jobs[i])}</td>" for r in runs)
        + "</tr>"
        for i, p in enumerate(prompts)
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Lanes A/B report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:2em}}
td,th{{border:1px solid #ccc;padding:6px;vertical-align:top;text-align:center}}
td.p{{text-align:left;max-width:18em}}</style>
</head><body><h1>Lanes A/B report</h1>
<p>The same {len(prompts)} prompts through the real pipeline (Kafka, router, lane worker, verifier)
on each engine, one engine at a time; typography repair off.
Latency: request accepted until the job ended.
Cost: the routes file's price table (hosted: per image; local: GPU time at
gpu_usd_per_hour). Peak memory: GPU on CUDA, resident on CPU (local engines only).</p>
<table><tr>{"".join(f"<th>{h}</th>" for h in SUMMARY_HEADS)}</tr>{summary}</table>
<table><tr><th>prompt</th>{heads}</tr>{grid}</table></body></html>"""
