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


def cell(driver, field: str) -> str:  # type: ignore[no-untyped-def]
    selector = f'section[data-group="chat"] [data-field="{field}"]'
    return str(driver.find_element(By.CSS_SELECTOR, selector).text)


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
        assert cell(driver, "ready") == "0" and cell(driver, "max") == "1"
        assert driver.find_element(By.ID, "conn").text == "live"
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
        assert cell(driver, "ready") == "1" and cell(driver, "desired") == "1"
        endpoint = driver.find_element(By.CSS_SELECTOR, 'section[data-group="chat"] [data-endpoint]')
        assert endpoint.get_attribute("data-endpoint").startswith("http://127.0.0.1:")
        events = driver.find_element(By.CSS_SELECTOR, 'section[data-group="chat"]').text
        assert "0 → 1" in events and "request waiting, no ready replica" in events
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
        stream = f'tr[data-stream="mem://{requests}?model=chat"]'
        answered = driver.find_element(By.CSS_SELECTOR, f'{stream} [data-field="outcome-answered"]').text
        invalid = driver.find_element(By.CSS_SELECTOR, f'{stream} [data-field="outcome-invalid"]').text
        assert (answered, invalid) == ("3", "1")
        assert driver.execute_script("return window.loadedOnce") is True, "the page reloaded"
    finally:
        mem.delete_topic(requests)
        mem.delete_topic(responses)


async def test_status_page_says_when_lingo_is_unreachable(start_lingo, browser) -> None:
    lingo = await start_lingo("models: []\n")
    await asyncio.to_thread(browser.get, lingo.url("health") + "/status")
    await wait_page(browser, lambda d: d.find_element(By.ID, "conn").text == "live", "live")
    assert "no model groups" in browser.find_element(By.ID, "groups").text
    await lingo.stop()
    await wait_page(browser, lambda d: d.find_element(By.ID, "conn").text == "unreachable", "unreachable")
    assert "cannot read status.json" in browser.find_element(By.ID, "error").text
