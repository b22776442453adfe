"""The live status page in a real headless Chromium (selenium + Debian's chromium-driver): the numbers
change on the page as traffic arrives, without a reload.

`LINGO_UPDATE_SCREENSHOT=1` also writes the screenshot taken under load to docs/img/status.png.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from lingo.batch.brokers import mem

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

SLOW = """
models:
  - name: chat
    models: [chat, gpt-4o-mini]
    command: [lingo, fake-model, --port, "{port}", --latency, "1.5"]
    max_replicas: 1
    concurrency: 2
"""


@pytest.fixture
def browser() -> Iterator[object]:
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip("chromium and chromium-driver are not installed (scripts/services.sh installs them)")
    os.environ.setdefault("SE_OFFLINE", "true")  # never let selenium download a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,640")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


async def completion(url: str) -> int:
    body = orjson.dumps({"model": "chat", "prompt": "hi", "max_tokens": 2})
    async with aiohttp.ClientSession() as session, session.post(url + "/v1/completions", data=body) as r:
        await r.read()
        return r.status


#: Reads the page in one script run: the page's own polling cannot replace the tables halfway.
READ_PAGE = """
const out = {};
const text = (el) => el.innerText.replace(/\u00a0/g, " ").trim();
for (const el of document.querySelectorAll('section[data-group="chat"] [data-field]'))
  out[el.dataset.field] = text(el);
const section = document.querySelector('section[data-group="chat"]');
out.text = section ? text(section) : "";
out.endpoints = [...document.querySelectorAll('section[data-group="chat"] [data-endpoint]')]
  .map((el) => el.dataset.endpoint);
for (const row of document.querySelectorAll('tr[data-stream]'))
  for (const el of row.querySelectorAll('[data-field^="outcome-"]'))
    out[row.dataset.stream + " " + el.dataset.field] = text(el);
out.conn = text(document.getElementById("conn"));
return out;
"""


def page(driver) -> dict:  # type: ignore[no-untyped-def]
    return dict(driver.execute_script(READ_PAGE))


def cell(driver, field: str) -> str:  # type: ignore[no-untyped-def]
    return str(page(driver).get(field, ""))


async def wait_page(driver, condition, what: str, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    """Wait (in a thread: lingo runs on this event loop) until `condition(driver)` holds on the page."""
    wait = WebDriverWait(driver, timeout, poll_frequency=0.05)
    await asyncio.to_thread(wait.until, condition, f"status page never showed {what}")


async def test_status_page_shows_the_numbers_change_under_traffic(start_lingo, browser, tmp_path) -> None:
    suffix = uuid.uuid4().hex[:8]
    requests, responses = f"page-req-{suffix}", f"page-resp-{suffix}"
    lingo = await start_lingo(SLOW, messengers=[f"mem://{requests}?model=chat|mem://{responses}|4"])
    driver = browser
    try:
        await asyncio.to_thread(driver.get, lingo.url("health") + "/status")
        await wait_page(driver, lambda d: cell(d, "in_flight") == "0", "the idle group")
        idle = page(driver)
        assert (idle["ready"], idle["max"], idle["conn"]) == ("0", "1", "live")
        driver.execute_script("window.loadedOnce = true")

        http = [asyncio.create_task(completion(lingo.url())) for _ in range(5)]
        topic = mem.topic(requests)
        for i in range(3):
            body = {"model": "chat", "prompt": "x", "max_tokens": 1}
            topic.publish(orjson.dumps({"metadata": {"i": i}, "body": body}))
        topic.publish(b"not json")

        await wait_page(
            driver,
            lambda d: cell(d, "in_flight") == "2" and int(cell(d, "queued")) >= 3,
            "two in flight and three or more queued",
        )
        busy = page(driver)
        assert busy["ready"] == "1" and busy["desired"] == "1"
        [endpoint] = busy["endpoints"]
        assert endpoint.startswith("http://127.0.0.1:")
        assert "0 → 1" in busy["text"] and "request waiting, no ready replica" in busy["text"]
        screenshot = tmp_path / "status.png"
        driver.save_screenshot(str(screenshot))
        if os.environ.get("LINGO_UPDATE_SCREENSHOT"):
            shutil.copy(screenshot, ROOT / "docs" / "img" / "status.png")

        assert await asyncio.gather(*http) == [200] * 5
        await wait_page(
            driver,
            lambda d: "200: 8" in cell(d, "requests") and cell(d, "in_flight") == "0",
            "all eight requests answered",
        )
        stream = f"mem://{requests}?model=chat"
        await wait_page(
            driver,
            lambda d: page(d).get(f"{stream} outcome-answered") == "3",
            "three batch messages answered",
        )
        assert page(driver)[f"{stream} outcome-invalid"] == "1"
        assert driver.execute_script("return window.loadedOnce") is True, "the page reloaded"
    finally:
        mem.delete_topic(requests)
        mem.delete_topic(responses)


async def test_status_page_says_when_lingo_is_unreachable(start_lingo, browser) -> None:
    lingo = await start_lingo("models: []\n")
    await asyncio.to_thread(browser.get, lingo.url("health") + "/status")
    await wait_page(browser, lambda d: page(d)["conn"] == "live", "live")
    assert "no model groups" in browser.find_element(By.ID, "groups").text
    await lingo.stop()
    await wait_page(browser, lambda d: page(d)["conn"] == "unreachable", "unreachable")
    assert "cannot read status.json" in browser.find_element(By.ID, "error").text
