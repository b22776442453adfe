"""Streaming: SSE chunks from `lingo fake-model --token-delay 0.02`, directly and through proxies.

Streams go out in *triples* started together: one straight to the fake model, one through lingo,
one through nginx (`proxy_buffering off`, the reference for what a fast proxy adds on this
machine). The fake model generates the three side by side on one event loop, so their token
timers drift alike, and chunk i of the proxied stream minus chunk i of its direct twin (both
counted from the same send instant) is what the proxy added before that chunk reached the client,
request forwarding included. Triples run one at a time, then `parallel` triples at once.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import aiohttp

from benchmarks import noise, targets

TOKENS = 50
TOKEN_DELAY = 0.02
PROXIES = ("lingo", "nginx")


def run_async(coroutine):  # type: ignore[no-untyped-def]
    """Run on uvloop when it is there: the client should cost as little as possible."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def _stream(session: aiohttp.ClientSession, url: str, started: float) -> list[float]:
    body = {**targets.REQUEST, "stream": True, "max_tokens": TOKENS}
    arrivals: list[float] = []
    async with session.post(url + targets.PATH, json=body) as response:
        response.raise_for_status()
        async for line in response.content:
            if line.startswith(b"data: {"):
                arrivals.append(time.perf_counter() - started)
    if len(arrivals) < TOKENS:
        raise RuntimeError(f"{url}: {len(arrivals)} chunks, expected at least {TOKENS}")
    return arrivals[:TOKENS]


async def _triple(session: aiohttp.ClientSession, urls: dict[str, str]) -> dict[str, list[float]]:
    started = time.perf_counter()
    streams = await asyncio.gather(*(_stream(session, url, started) for url in urls.values()))
    return dict(zip(urls, streams, strict=True))


async def _round(urls: dict[str, str], sequential: int, parallel: int) -> dict:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        modes = {
            "sequential": [await _triple(session, urls) for _ in range(sequential)],
            "parallel": await asyncio.gather(*(_triple(session, urls) for _ in range(parallel))),
        }
    figures: dict = {}
    for mode, triples in modes.items():
        figures[mode] = {"ttft_direct_ms": statistics.median(t["direct"][0] for t in triples) * 1e3}
        for proxy in PROXIES:
            added = [(t[proxy][i] - t["direct"][i]) * 1e3 for t in triples for i in range(TOKENS)]
            figures[mode][proxy] = {
                "added_median_ms": statistics.median(added),
                "added_p99_ms": percentile(added, 99),
                "ttft_ms": statistics.median(t[proxy][0] for t in triples) * 1e3,
            }
    return figures


def run(workdir: Path, rounds: int = 3, sequential: int = 10, parallel: int = 16) -> dict:
    servers: list[targets.Server] = []
    try:
        backend = targets.fake_model(workdir, "--token-delay", str(TOKEN_DELAY))
        servers.append(backend)
        lingo = targets.lingo("lingo-streaming", workdir, targets.static_models(backend.url))
        servers.append(lingo)
        nginx = targets.nginx_proxy(workdir, backend, buffering=False)
        servers.append(nginx)
        urls = {"direct": backend.url, "lingo": lingo.url, "nginx": nginx.url}
        run_async(_round(urls, 1, 4))  # warm up
        per_round = []
        for round_ in range(rounds):
            figures, busy = noise.measured(
                lambda: run_async(_round(urls, sequential, parallel)), f"round {round_ + 1}/{rounds}"
            )
            figures["foreign_cores"] = busy
            per_round.append(figures)
            print(f"  round {round_ + 1}/{rounds} added per chunk (median / p99 ms):", end="")
            for mode, count in (("sequential", 1), ("parallel", parallel)):
                for proxy in PROXIES:
                    f = figures[mode][proxy]
                    print(
                        f"  {count}x3 streams {proxy} {f['added_median_ms']:.3f} / {f['added_p99_ms']:.3f}",
                        end="",
                    )
            print(flush=True)
        result: dict = {
            "tokens": TOKENS,
            "token_delay": TOKEN_DELAY,
            "sequential_triples": sequential,
            "parallel_triples": parallel,
        }
        for mode in ("sequential", "parallel"):
            result[mode] = {"ttft_direct_ms": statistics.median(r[mode]["ttft_direct_ms"] for r in per_round)}
            for proxy in PROXIES:
                keys = per_round[0][mode][proxy]
                result[mode][proxy] = {
                    k: statistics.median(r[mode][proxy][k] for r in per_round) for k in keys
                }
        result["foreign_max"] = max(r["foreign_cores"] for r in per_round)
        result["rounds"] = per_round
        return result
    finally:
        for server in reversed(servers):
            server.stop()
