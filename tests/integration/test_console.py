"""The web console in a real browser (Debian's headless chromium, driven by Playwright)
against a running stack on the real broker: submit and watch a job to its image, cancel a
queued job, a hostile prompt shown as text, a canary and a rollback from the rollouts page.
Screenshots of every page go to results/console/."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from schemas.control import OpsCommand
from services.apps.ops_client import send_and_wait
from services.config.routes import load_routes
from services.config.settings import Settings
from services.domain.rollout import RolloutView
from tests.support import Stack, WebhookReceiver, running_stack, wait_until, write_routes

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = Path(__file__).parents[2] / "results" / "console"

if CHROMIUM is None:
    pytest.skip("no chromium (apt-get install chromium; make test does)", allow_module_level=True)


@pytest.fixture
async def stack(settings: Settings, tmp_path: Path) -> AsyncIterator[Stack]:
    routes = write_routes(
        tmp_path / "routes.yaml",
        draft={
            "sample_steps": 30,
            "width": 128,
            "height": 128,
            "preview_every": 3,
            "typography": {"repair": True},
        },
    )
    doc = routes.read_text().replace(
        "models:\n", "models:\n  tiny-sd-b:\n    tiny: {seed: 1}\n    version: tiny-b1\n", 1
    )
    routes.write_text(doc)
    async with running_stack(
        settings,
        routes_file=routes,
        progress_interval_s=0.1,
        heartbeat_s=0.3,
    ) as s:
        s.tenant_key = await s.new_key("acme")  # type: ignore[attr-defined]
        await s.wait_workers_ready()
        yield s


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            await b.close()


def base(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.settings.gateway.port}"


async def test_submit_watch_and_see_the_image(
    stack: Stack, browser: Any, receiver: WebhookReceiver
) -> None:
    page = await browser.new_page(viewport={"width": 1200, "height": 900})
    await sign_in(page, stack, stack.tenant_key)  # type: ignore[attr-defined]
    assert "acme" in await page.inner_text("#who")
    assert await page.query_selector("nav a[href='/rollouts']") is None  # no ops pages
    await page.fill("textarea[name=prompt]", 'a poster with the text "SALE"')
    await page.screenshot(path=str(SHOTS / "submit.png"), full_page=True)
    await page.click("button[type=submit]")
    await page.wait_for_url("**/jobs/job_*")
    job_id = page.url.rsplit("/", 1)[-1]
    # Live: the progress bar moves and a latent preview shows (the stream's progress
    # events) before the job ends.
    await page.wait_for_function(
        "(document.getElementById('steps')?.textContent || '').includes('step')"
        " && !document.getElementById('preview').hidden"
        " && document.getElementById('preview').src.startsWith('data:image/jpeg')",
        timeout=60_000,
    )
    await page.screenshot(path=str(SHOTS / "job-running.png"), full_page=True)
    await page.wait_for_function(
        "document.getElementById('status').textContent === 'succeeded'", timeout=90_000
    )
    await page.wait_for_selector(".artifacts img")
    loaded = await page.eval_on_selector_all(
        ".artifacts img", "imgs => imgs.map(i => i.complete && i.naturalWidth)"
    )
    assert loaded and all(w and w > 0 for w in loaded)  # the images load from the gateway
    text = await page.inner_text("main")
    assert "SALE" in text and "draft" in text and "tiny-sd" in text  # verification, lane, model
    await page.screenshot(path=str(SHOTS / "job.png"), full_page=True)
    job = (await stack.http.get(f"/v1/generations/{job_id}")).json()
    assert job["status"] == "succeeded"

    # The other pages, with this job on them.
    await page.goto(base(stack) + "/gallery")
    await page.wait_for_selector(f"a.thumb[href='/jobs/{job_id}'] img")
    await page.screenshot(path=str(SHOTS / "gallery.png"), full_page=True)
    await page.goto(base(stack) + "/gallery?status=failed")
    assert await page.query_selector(f"a.thumb[href='/jobs/{job_id}']") is None  # status tab
    # The lanes page is for an admin key.
    await page.goto(base(stack) + "/lanes")
    assert "/login" in page.url
    await sign_in(page, stack, stack.admin_key, then="/lanes")
    await page.wait_for_selector("#lane-draft")
    await page.wait_for_function(
        "!document.querySelector('#lane-draft .lag').textContent.includes('measuring')",
        timeout=30_000,
    )
    assert "tiny-v1" in await page.inner_text("#lane-draft")
    await page.screenshot(path=str(SHOTS / "lanes.png"), full_page=True)


async def test_cancel_a_queued_job_from_its_page(stack: Stack, browser: Any) -> None:
    result = await send_and_wait(stack.settings, OpsCommand(action="pause", lane="draft"))
    assert result.outcome == "applied"
    await wait_until(lambda: stack.workers["draft"].cap == 0, timeout=30, what="lane paused")
    page = await browser.new_page()
    await sign_in(page, stack, stack.tenant_key)  # type: ignore[attr-defined]
    await page.fill("textarea[name=prompt]", "waits in the queue")
    await page.click("button[type=submit]")
    await page.wait_for_url("**/jobs/job_*")
    job_id = page.url.rsplit("/", 1)[-1]
    await page.click("#cancel")
    await page.wait_for_function(
        "document.getElementById('status').textContent === 'canceled'", timeout=60_000
    )
    job = (await stack.http.get(f"/v1/generations/{job_id}")).json()
    assert job["status"] == "canceled"
    await send_and_wait(stack.settings, OpsCommand(action="resume", lane="draft"))


async def test_a_hostile_prompt_shows_as_text(stack: Stack, browser: Any) -> None:
    hostile = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
    page = await browser.new_page()
    await sign_in(page, stack, stack.tenant_key)  # type: ignore[attr-defined]
    await page.fill("textarea[name=prompt]", hostile)
    await page.click("button[type=submit]")
    await page.wait_for_url("**/jobs/job_*")
    await page.wait_for_selector("#prompt", timeout=60_000)
    assert await page.inner_text("#prompt") == hostile  # shown, as typed
    assert await page.evaluate("typeof window.pwned") == "undefined"  # and never run
    await page.goto(base(stack) + "/gallery")
    assert await page.evaluate("typeof window.pwned") == "undefined"


async def test_canary_then_rollback_from_the_rollouts_page(stack: Stack, browser: Any) -> None:
    page = await browser.new_page(viewport={"width": 1200, "height": 900})
    await page.goto(base(stack) + "/rollouts")
    assert "/login" in page.url  # admin pages need an admin key
    await page.fill("input[name=key]", "lanes_wrong")
    await page.click("form.card button")
    assert "API key is missing, malformed" in await page.inner_text("main")
    await page.fill("input[name=key]", stack.admin_key)
    await page.click("form.card button")
    await page.wait_for_url("**/rollouts")
    form = "#rollout-draft form.actions"
    await page.select_option(f"{form} select[name=model]", "tiny-sd-b")
    await page.fill(f"{form} input[name=percent]", "30")
    await page.fill(f"{form} input[name=reason]", "try b")
    await page.click(f"{form} button[value=canary]")
    await page.wait_for_selector(".flash")
    assert "applied" in await page.inner_text(".flash")
    view = RolloutView(stack.settings, load_routes(stack.settings.routes_file))

    async def desired() -> Any:
        await view.load()
        return next(item.desired for item in view.lanes() if item.lane == "draft")

    state = await desired()  # what `lanes ops status` prints
    assert state.canary is not None and state.canary.target.model == "tiny-sd-b"
    assert state.canary.percent == 30 and state.reason == "try b"
    await page.reload()
    assert "tiny-sd-b" in await page.inner_text("#rollout-draft .canary")
    await page.screenshot(path=str(SHOTS / "rollouts.png"), full_page=True)
    await page.click(f"{form} button[value=rollback]")
    await page.wait_for_selector(".flash")
    assert "applied" in await page.inner_text(".flash")
    state = await desired()
    assert state.canary is None
    admin_id = stack.admin_key.split("_")[1]
    assert f"key:{admin_id}" in (await page.inner_text("#rollout-draft table"))  # who


async def sign_in(page: Any, stack: Stack, key: str, then: str = "/") -> None:
    await page.goto(base(stack) + f"/login?next={then}")
    await page.fill("input[name=key]", key)
    await page.click("form.card button")
    await page.wait_for_url(f"**{then}")


async def test_deliveries_and_a_dead_letter_replayed_from_the_page(
    stack: Stack, browser: Any, receiver: WebhookReceiver
) -> None:
    receiver.statuses = [500, 500, 500]  # every attempt (3 in tests) fails: dead letter
    job_id = await stack.submit(
        {"prompt": "a kite", "intent": "draft", "webhook_url": receiver.url}
    )
    await receiver.wait_for(3)
    page = await browser.new_page(viewport={"width": 1200, "height": 900})
    await sign_in(page, stack, stack.admin_key, then="/deliveries")
    row = f"#dlq tr:has-text('{job_id}:succeeded')"
    for _ in range(60):  # the dead letter reaches the gateway's view
        if await page.query_selector(row):
            break
        await page.wait_for_timeout(500)
        await page.reload()
    assert "failed" in await page.inner_text("#deliveries")
    await page.screenshot(path=str(SHOTS / "deliveries.png"), full_page=True)
    await page.click(f"{row} button")
    await page.wait_for_selector(".flash")
    assert f"{job_id}:succeeded" in await page.inner_text(".flash")
    await receiver.wait_for(4)  # replayed, same webhook-id, and now delivered
    assert (
        receiver.deliveries[-1].headers["webhook-id"]
        == receiver.deliveries[0].headers["webhook-id"]
    )
