"""`/status.json` and `/status` on the health port of a real lingo, under real traffic."""

from __future__ import annotations

import asyncio
import re
import uuid

import aiohttp
import orjson

from lingo.batch.brokers import mem
from tests.conftest import fetch_json

SLOW = """
models:
  - name: chat
    models: [chat, gpt-4o-mini]
    command: [lingo, fake-model, --port, "{port}", --latency, "1.5"]
    max_replicas: 1
    concurrency: 2
"""


def static(url: str) -> str:
    return f"""
models:
  - name: static
    endpoints: ["{url}"]
"""


async def completion(url: str, model: str = "chat") -> int:
    body = orjson.dumps({"model": model, "prompt": "hi", "max_tokens": 2})
    async with aiohttp.ClientSession() as session, session.post(url + "/v1/completions", data=body) as r:
        await r.read()
        return r.status


async def test_status_json_shows_replicas_queues_endpoints_and_scale_events(start_lingo) -> None:
    lingo = await start_lingo(SLOW)
    status_url = lingo.url("health") + "/status.json"
    facts = await fetch_json(status_url)
    assert isinstance(facts, dict)
    [group] = facts["groups"]
    assert group["name"] == "chat" and group["models"] == ["chat", "gpt-4o-mini"]
    assert group["replicas"] == {"desired": 0, "ready": 0, "min": 0, "max": 1}
    assert set(group["queued"]) == set(facts["classes"]) and group["endpoints"] == []
    assert facts["ready"] is True and facts["platform"] == "local" and facts["streams"] == []

    requests = [asyncio.create_task(completion(lingo.url())) for _ in range(5)]
    seen: dict = {}

    async def busy() -> bool:
        nonlocal seen
        seen = (await fetch_json(status_url))["groups"][0]  # type: ignore[index]
        return seen["in_flight"] == 2 and seen["queued_total"] == 3

    deadline = asyncio.get_running_loop().time() + 20
    while not await busy():
        assert asyncio.get_running_loop().time() < deadline, seen
        await asyncio.sleep(0.02)
    assert sum(seen["queued"].values()) == 3
    assert seen["replicas"]["desired"] == 1 and seen["replicas"]["ready"] == 1
    [endpoint] = seen["endpoints"]
    assert endpoint["in_flight"] == 2 and endpoint["url"].startswith("http://127.0.0.1:")
    [event] = seen["scale_events"]
    assert (event["from"], event["to"]) == (0, 1) and event["reason"] == "request waiting, no ready replica"

    assert await asyncio.gather(*requests) == [200] * 5
    after = (await fetch_json(status_url))["groups"][0]  # type: ignore[index]
    assert after["in_flight"] == 0 and after["queued_total"] == 0 and after["requests"] == {"200": 5}


async def test_status_json_shows_batch_streams_with_outcomes_and_backlog(start_lingo, fake_model) -> None:
    suffix = uuid.uuid4().hex[:8]
    requests, responses = f"status-req-{suffix}", f"status-resp-{suffix}"
    lingo = await start_lingo(
        static(fake_model().url), messengers=[f"mem://{requests}?model=static|mem://{responses}|8"]
    )
    try:
        topic = mem.topic(requests)
        for i in range(3):
            envelope = {"metadata": {"i": i}, "body": {"model": "static", "prompt": "x", "max_tokens": 1}}
            topic.publish(orjson.dumps(envelope))
        topic.publish(b"not json")
        status_url = lingo.url("health") + "/status.json"
        facts: dict = {}

        async def settled() -> bool:
            nonlocal facts
            facts = await fetch_json(status_url)  # type: ignore[assignment]
            return facts["streams"][0]["outcomes"]["answered"] == 3

        deadline = asyncio.get_running_loop().time() + 15
        while not await settled():
            assert asyncio.get_running_loop().time() < deadline, facts
            await asyncio.sleep(0.05)
        [stream] = facts["streams"]
        assert stream["stream"] == f"mem://{requests}?model=static"
        assert stream["responses"] == f"mem://{responses}" and stream["model"] == "static"
        assert stream["open"] is True and stream["max_handlers"] == 8
        assert stream["outcomes"] == {"answered": 3, "error": 0, "retried": 0, "invalid": 1, "nacked": 0}
        assert stream["backlog"] == 0 and stream["in_flight"] == 0
        assert facts["groups"][0]["requests"] == {"200": 3}
    finally:
        mem.delete_topic(requests)
        mem.delete_topic(responses)


async def test_jobs_provider_feeds_the_jobs_list(start_lingo, fake_model) -> None:
    lingo = await start_lingo(static(fake_model().url))
    counts = {"total": 4, "completed": 1, "failed": 0}
    job = {"id": "batch_1", "status": "in_progress", "request_counts": counts}

    async def jobs() -> list[dict]:
        return [job]

    lingo.status.jobs = jobs
    facts = await fetch_json(lingo.url("health") + "/status.json")
    assert facts["jobs"] == [job]  # type: ignore[index]


async def test_status_page_is_one_self_contained_html_file(start_lingo, fake_model) -> None:
    lingo = await start_lingo(static(fake_model().url))
    async with aiohttp.ClientSession() as session, session.get(lingo.url("health") + "/status") as r:
        assert r.status == 200 and r.content_type == "text/html"
        page = await r.text()
    # Works offline inside a cluster: no external scripts, styles, fonts or images.
    assert "<script>" in page and "status.json" in page
    assert not re.search(r"""(src|href)\s*=|@import|url\(|https?://""", page)
