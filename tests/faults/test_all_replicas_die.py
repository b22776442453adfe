"""Every replica of a model dies under load: queued requests wait for the replacements and succeed."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import time

import aiohttp
import orjson
import pytest

from tests.conftest import wait_for
from tests.faults.support import is_openai_error, requests_total, scrape

REQUESTS = 100
CONCURRENCY = 4
MODELS = f"""
models:
  - name: chat
    command: [lingo, fake-model, --port, "{{port}}", --latency, "0.2"]
    min_replicas: 2
    max_replicas: 2
    concurrency: {CONCURRENCY}
"""


async def call(session: aiohttp.ClientSession, url: str, ident: int) -> tuple[int, int, bytes, bool]:
    body = orjson.dumps({"model": "chat", "prompt": f"request {ident}", "user": str(ident)})
    async with session.post(url + "/v1/completions", data=body) as response:
        data = await response.read()
        return ident, response.status, data, is_openai_error(response.headers, data)


@pytest.mark.parametrize("retries", [1, 5])
async def test_requests_queued_when_all_replicas_die_are_served_by_their_replacements(
    start_lingo, retries: int
) -> None:
    lingo = await start_lingo(MODELS, backend_retries=retries, max_wait=60.0)
    queue = lingo.registry.queues["chat"]
    await wait_for(lambda: len(queue.endpoints) == 2, timeout=30)
    replicas = list(lingo.platform.replicas["chat"])  # type: ignore[attr-defined]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(call(session, lingo.url(), i)) for i in range(REQUESTS)]
        await wait_for(lambda: queue.active == REQUESTS, timeout=30)
        await asyncio.sleep(0.3)  # let a first wave finish, the next be mid-request
        in_flight_at_kill, queued_at_kill = queue.in_flight, queue.queued
        killed_at = time.monotonic()
        for replica in replicas:
            os.killpg(replica.process.pid, signal.SIGKILL)
        results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
        elapsed = time.monotonic() - killed_at
        samples = await scrape(session, lingo.url("metrics"))

    answers = collections.Counter(ident for ident, *_ in results)
    assert sorted(answers) == list(range(REQUESTS)) and set(answers.values()) == {1}
    ok = [data for _, status, data, _ in results if status == 200]
    failed = [(status, data, shaped) for _, status, data, shaped in results if status != 200]
    # Only requests whose backend died under them may fail, and only with lingo's 502.
    assert len(failed) <= in_flight_at_kill, failed[:3]
    assert all(status == 502 and shaped for status, _, shaped in failed), failed[:3]
    assert all(orjson.loads(data)["choices"] for data in ok)
    assert sum(requests_total(samples, "chat").values()) == REQUESTS
    assert {r.url for r in replicas}.isdisjoint(queue.endpoints)  # served by replacements
    print(
        f"\nFIGURE all replicas killed (BACKEND_RETRIES={retries}): {in_flight_at_kill} in flight + "
        f"{queued_at_kill} queued at kill; {len(ok)}/{REQUESTS} answered 200, {len(failed)} answered 502; "
        f"all answered once, {elapsed:.1f} s after the kill"
    )
