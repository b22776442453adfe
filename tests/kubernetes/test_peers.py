"""Summing demand over lingo replicas: staleness arithmetic and fetching peers' /stats."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from lingo.platforms.kubernetes.demand import DemandTable, parse_stats
from lingo.platforms.kubernetes.peers import PeerStats
from tests.conftest import free_port


def test_a_silent_peer_counts_with_its_last_answer_for_the_staleness_window_then_as_zero():
    table = DemandTable(staleness=10)
    table.record("a:1", {"m": 3}, now=100)
    table.record("b:1", {"m": 2, "n": 1}, now=100)
    assert table.total({"m": 1}, ["a:1", "b:1"], now=105) == {"m": 6, "n": 1}
    table.record("a:1", {"m": 4}, now=108)
    assert table.total({"m": 1}, ["a:1", "b:1"], now=110) == {"m": 7, "n": 1}
    assert table.total({"m": 1}, ["a:1", "b:1"], now=110.5) == {"m": 5}


def test_a_peer_that_left_the_service_is_forgotten():
    table = DemandTable(staleness=10)
    table.record("a:1", {"m": 3}, now=100)
    assert table.total({}, [], now=101) == {}
    assert table.total({}, ["a:1"], now=101) == {}


@pytest.mark.parametrize(
    "body",
    [
        [],
        {},
        {"activeRequests": []},
        {"activeRequests": {"m": -1}},
        {"activeRequests": {"m": "3"}},
        {"activeRequests": {"m": True}},
    ],
)
def test_malformed_stats_are_rejected(body):
    with pytest.raises(ValueError):
        parse_stats(body)


async def stats_server(counts: dict[str, int], delay: float = 0.0) -> tuple[web.AppRunner, str]:
    async def stats(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.json_response({"activeRequests": counts})

    app = web.Application()
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"127.0.0.1:{port}"


async def test_peers_are_fetched_concurrently_and_a_slow_or_dead_one_does_not_hold_up_the_sum():
    fast, fast_address = await stats_server({"m": 2})
    slow, slow_address = await stats_server({"m": 5}, delay=5.0)
    dead_address = f"127.0.0.1:{free_port()}"
    peers = PeerStats(timeout=0.5, staleness=10)
    try:
        started = time.monotonic()
        total = await peers.total({"m": 1.0}, [fast_address, slow_address, dead_address])
        assert time.monotonic() - started < 1.5
        assert total == {"m": 3.0}
    finally:
        await peers.close()
        for runner in (fast, slow):
            await runner.cleanup()


async def test_a_peer_that_stops_answering_keeps_its_last_counts_until_they_are_stale():
    runner, address = await stats_server({"m": 4})
    clock = [0.0]
    peers = PeerStats(timeout=0.5, staleness=10, clock=lambda: clock[0])
    try:
        assert await peers.total({}, [address]) == {"m": 4.0}
        await runner.cleanup()
        clock[0] = 9.0
        assert await peers.total({}, [address]) == {"m": 4.0}
        clock[0] = 10.5
        assert await peers.total({}, [address]) == {}
    finally:
        await peers.close()
