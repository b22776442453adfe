"""2,000 clients hang up while queued: lingo's gauges return to zero and its memory to where it was."""

from __future__ import annotations

import asyncio
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import free_port, wait_for
from tests.faults.support import gauge, models_file, scrape, static_model

CLIENTS = 2000
ROUNDS = 2  # the second round shows whether what the first one left behind grows
FILES = 3 * CLIENTS + 1024  # client sockets, lingo's sockets (one per client), slack
# Measured: +19 MB before cache-aware routing and the HTTP limits landed, +28 MB with them (peak of
# round one, never exceeded by round two); the cause of the extra 9 MB is not found yet.
RSS_MARGIN_MB = 40.0


def raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FILES if hard == resource.RLIM_INFINITY else min(FILES, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


class LingoProcess:
    """`python -m lingo serve` as a child process on free ports."""

    def __init__(self, models_path: Path, log_path: Path) -> None:
        self.ports = {name: free_port() for name in ("proxy", "health", "metrics", "stats")}
        self.log_path = log_path
        flags = {
            "--models-file": str(models_path),
            "--proxy-address": f"127.0.0.1:{self.ports['proxy']}",
            "--health-probe-bind-address": f"127.0.0.1:{self.ports['health']}",
            "--metrics-bind-address": f"127.0.0.1:{self.ports['metrics']}",
            "--stats-address": f"127.0.0.1:{self.ports['stats']}",
            "--platform": "local",
            "--log-level": "warning",
            "--shutdown-grace": "2",
            "--shutdown-delay": "0",
        }
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lingo", "serve", *(part for item in flags.items() for part in item)],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=raise_file_limit,
            )

    def url(self, name: str = "proxy") -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def lingo_process(tmp_path: Path, fake_model) -> Iterator[LingoProcess]:  # type: ignore[no-untyped-def]
    raise_file_limit()
    slow = fake_model("--latency", "120")  # two requests sit on it; the rest queue behind them
    fast = fake_model()
    path = tmp_path / "models.yaml"
    path.write_text(
        models_file(static_model("slow", slow.url, concurrency=2), static_model("fast", fast.url))
    )
    process = LingoProcess(path, tmp_path / "lingo.log")
    yield process
    process.stop()


async def until_ready(process: LingoProcess, session: aiohttp.ClientSession) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.process.poll() is None, process.log_path.read_text()
        try:
            async with session.get(process.url("health") + "/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("lingo serve not ready within 30 s")


async def hold(session: aiohttp.ClientSession, url: str) -> None:
    async with session.post(url + "/v1/completions", data=b'{"model": "slow", "prompt": "x"}') as response:
        await response.read()


async def waiting(session: aiohttp.ClientSession, process: LingoProcess) -> tuple[float, float]:
    """(queued, in flight) of the slow model, read from /metrics."""
    samples = await scrape(session, process.url("metrics"))
    return gauge(samples, "lingo_requests_queued", "slow"), gauge(samples, "lingo_requests_in_flight", "slow")


async def queue_and_hang_up(
    session: aiohttp.ClientSession, process: LingoProcess
) -> tuple[float, float, float]:
    """One round: CLIENTS requests wait, then all disconnect; (seconds to queue, to drain, peak RSS MB)."""
    pid = process.process.pid
    peak = rss_mb(pid)
    started = time.monotonic()
    clients = [asyncio.create_task(hold(session, process.url())) for _ in range(CLIENTS)]
    while sum(counts := await waiting(session, process)) != CLIENTS:
        assert time.monotonic() - started < 120, f"{CLIENTS} clients not all waiting within 120 s: {counts}"
        assert not any(task.done() for task in clients), "a client was answered while it should wait"
        peak = max(peak, rss_mb(pid))
        await asyncio.sleep(0.2)
    queued_in = time.monotonic() - started
    assert counts == (CLIENTS - 2, 2)
    peak = max(peak, rss_mb(pid))

    hung_up = time.monotonic()
    for task in clients:
        task.cancel()
    await asyncio.gather(*clients, return_exceptions=True)
    while (counts := await waiting(session, process)) != (0, 0):
        assert time.monotonic() - hung_up < 60, f"gauges not back to 0 within 60 s: {counts}"
        await asyncio.sleep(0.1)
    return queued_in, time.monotonic() - hung_up, peak


async def test_two_thousand_clients_leaving_the_queue_free_their_places_and_memory(
    lingo_process: LingoProcess,
) -> None:
    pid = lingo_process.process.pid
    connector = aiohttp.TCPConnector(limit=CLIENTS + 100, force_close=True)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None)
    ) as session:
        await until_ready(lingo_process, session)
        async with session.get(lingo_process.url() + "/v1/models") as response:
            assert response.status == 200
        await asyncio.sleep(0.5)
        before = rss_mb(pid)
        rounds = [await queue_and_hang_up(session, lingo_process) for _ in range(ROUNDS)]

        body = b'{"model": "fast"}'
        async with session.post(lingo_process.url() + "/v1/completions", data=body) as response:
            assert response.status == 200
        async with session.get(lingo_process.url("health") + "/healthz") as response:
            assert response.status == 200

    await wait_for(lambda: rss_mb(pid) <= before + RSS_MARGIN_MB, timeout=15, interval=0.25)
    after = rss_mb(pid)
    peak = max(peak for _, _, peak in rounds)
    timings = ", ".join(f"queued in {q:.1f} s / gauges 0 after {d:.2f} s" for q, d, _ in rounds)
    print(
        f"\nFIGURE {ROUNDS} rounds of {CLIENTS} clients hanging up while queued ({timings}); "
        f"lingo RSS before {before:.1f} MB, peak {peak:.1f} MB, after {after:.1f} MB"
    )
