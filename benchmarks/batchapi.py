"""Batches API: a batch through 2 fake replicas, next to the same lines as concurrent HTTP requests,
and interactive latency while the batch runs against without it.

One `lingo serve` (SQLite in the work folder) in front of two `lingo fake-model` replicas (a static
model group). Figures:
- HTTP: the lines sent as chat completions by `HTTP_CLIENTS` concurrent clients → lines/s;
- batch: the same lines uploaded as one batch, from `batches.create` to `completed` → lines/s, and
  the ratio batch / HTTP;
- interactive p50/p99 of `INTERACTIVE_CLIENTS` clients alone, then while a second batch runs.

`python -m benchmarks.batchapi [--lines N]` (short mode: `--lines 1000`); `run()` returns the figures
and writes them into their own block of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import openai
import orjson

from benchmarks.report import replace_block

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- batchapi:begin (written by `make bench` / `--only batchapi`) -->", "<!-- batchapi:end -->"
#: Per-request latency of the fake replicas (a small model's answer).
LATENCY = "0.01"
#: Slots per replica, and lines of the batch in flight at once (both replicas full).
REPLICA_CONCURRENCY = 32
BATCH_CONCURRENCY = 64
#: Clients sending the lines over HTTP for the comparison.
HTTP_CLIENTS = 64
#: Interactive clients measured alone and during a batch, and their requests each.
INTERACTIVE_CLIENTS = 4
INTERACTIVE_REQUESTS = 100
#: Bound on each phase.
PHASE_TIMEOUT = 600.0
BODY = {"model": "fake", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=ROOT
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


async def _wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} not up in {timeout}s")


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def _http_lines(base: str, lines: int) -> float:
    """Seconds to send `lines` chat completions with `HTTP_CLIENTS` concurrent clients."""
    remaining = iter(range(lines))
    body = orjson.dumps(BODY)
    connector = aiohttp.TCPConnector(limit=HTTP_CLIENTS)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            for _ in remaining:
                async with session.post(
                    base + "/chat/completions", data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    await response.read()
                    assert response.status == 200, response.status

        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(client() for _ in range(HTTP_CLIENTS))), PHASE_TIMEOUT)
        return time.monotonic() - started


async def _interactive(base: str, until: asyncio.Event | None = None) -> list[float]:
    """Latencies of `INTERACTIVE_CLIENTS` clients, each sending requests one after another (until
    `until` is set, at most `INTERACTIVE_REQUESTS` each)."""
    body = orjson.dumps(BODY)
    latencies: list[float] = []
    async with aiohttp.ClientSession() as session:

        async def client() -> None:
            for _ in range(INTERACTIVE_REQUESTS):
                if until is not None and until.is_set():
                    return
                started = time.monotonic()
                async with session.post(
                    base + "/chat/completions", data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    await response.read()
                latencies.append(time.monotonic() - started)

        await asyncio.wait_for(asyncio.gather(*(client() for _ in range(INTERACTIVE_CLIENTS))), PHASE_TIMEOUT)
    return latencies


async def _batch(client: openai.AsyncOpenAI, lines: int, tag: str) -> tuple[str, bytes]:
    content = b"".join(
        orjson.dumps(
            {"custom_id": f"{tag}-{i}", "method": "POST", "url": "/v1/chat/completions", "body": BODY}
        )
        + b"\n"
        for i in range(lines)
    )
    upload = await client.files.create(file=(f"{tag}.jsonl", content, "application/jsonl"), purpose="batch")
    return upload.id, content


async def _run_batch(client: openai.AsyncOpenAI, file_id: str, done: asyncio.Event | None = None) -> float:
    """Seconds from create to completed."""
    started = time.monotonic()
    batch = await client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = started + PHASE_TIMEOUT
    try:
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"batch not finished in {PHASE_TIMEOUT}s: {batch}")
            await asyncio.sleep(0.05)
            batch = await client.batches.retrieve(batch.id)
    finally:
        if done is not None:
            done.set()
    if batch.status != "completed" or (batch.request_counts and batch.request_counts.failed):
        raise RuntimeError(f"batch ended {batch.status}: {batch.request_counts}")
    return time.monotonic() - started


async def _measure(base: str, lines: int) -> dict[str, float]:
    async with openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0, timeout=120) as client:
        await _http_lines(base, min(lines, 200))  # warm connections and the fake replicas
        http_s = await _http_lines(base, lines)
        file_id, _ = await _batch(client, lines, "a")
        batch_s = await _run_batch(client, file_id)
        alone = await _interactive(base)
        second, _ = await _batch(client, lines, "b")
        done = asyncio.Event()
        running = asyncio.create_task(_run_batch(client, second, done))
        while (await client.batches.list(limit=1)).data[0].status == "validating":
            await asyncio.sleep(0.02)
        during = await _interactive(base, done)
        await running
    return {
        "lines": lines,
        "http_lines_per_s": lines / http_s,
        "batch_lines_per_s": lines / batch_s,
        "ratio": http_s / batch_s,
        "interactive_p50_ms_alone": statistics.median(alone) * 1000,
        "interactive_p99_ms_alone": _percentile(alone, 0.99) * 1000,
        "interactive_p50_ms_during": statistics.median(during) * 1000,
        "interactive_p99_ms_during": _percentile(during, 0.99) * 1000,
        "interactive_requests_during": len(during),
    }


def run(workdir: Path, lines: int = 10_000, docs: bool = True) -> dict[str, float]:
    """Start 2 fake replicas and lingo, measure, stop them; the figures (also written to the docs)."""
    work = Path(tempfile.mkdtemp(prefix="batchapi-", dir=workdir))
    replicas = [_free_port(), _free_port()]
    processes = [
        _spawn(
            [sys.executable, "-m", "lingo", "fake-model", "--port", str(port), "--latency", LATENCY],
            work / f"replica-{port}.log",
        )
        for port in replicas
    ]
    try:
        endpoints = ", ".join(f'"http://127.0.0.1:{port}"' for port in replicas)
        models = work / "models.yaml"
        models.write_text(
            f"models:\n  - name: fake\n    endpoints: [{endpoints}]\n    concurrency: {REPLICA_CONCURRENCY}\n"
        )
        proxy, health = _free_port(), _free_port()
        env = {
            **os.environ,
            "LINGO_PLATFORM": "local",
            "LINGO_MODELS_FILE": str(models),
            "LINGO_PROXY_ADDRESS": f"127.0.0.1:{proxy}",
            "HEALTH_PROBE_BIND_ADDRESS": f"127.0.0.1:{health}",
            "METRICS_BIND_ADDRESS": f"127.0.0.1:{_free_port()}",
            "LINGO_STATS_ADDRESS": f"127.0.0.1:{_free_port()}",
            "LINGO_DATA_DIR": str(work / "data"),
            "LINGO_BATCH_API_CONCURRENCY": str(BATCH_CONCURRENCY),
            "LINGO_BATCH_API_POLL_INTERVAL": "0.2s",
            "LINGO_LOG_LEVEL": "warning",
        }
        processes.append(_spawn([sys.executable, "-m", "lingo", "serve"], work / "lingo.log", env))

        async def measure() -> dict[str, float]:
            for port in replicas:
                await _wait_http(f"http://127.0.0.1:{port}/health")
            await _wait_http(f"http://127.0.0.1:{health}/readyz")
            return await _measure(f"http://127.0.0.1:{proxy}/v1", lines)

        figures = asyncio.run(measure())
    finally:
        for process in processes:
            _stop(process)
    if docs:
        replace_block(ROOT / "docs" / "benchmarks.md", BEGIN, END, f"{BEGIN}\n{render(figures)}{END}")
    return figures


def render(f: dict[str, float]) -> str:
    return "\n".join(
        [
            "### Batches API",
            "",
            f"A {f['lines']:,}-line batch (`/v1/chat/completions`) through 2 fake replicas "
            f"({LATENCY} s per answer, {REPLICA_CONCURRENCY} slots each), SQLite store, "
            f"{BATCH_CONCURRENCY} lines in flight; HTTP: the same lines from {HTTP_CLIENTS} "
            "concurrent clients.",
            "",
            "| figure | value |",
            "|---|---|",
            f"| HTTP, concurrent requests | {f['http_lines_per_s']:,.0f} lines/s |",
            f"| Batches API, create → completed | {f['batch_lines_per_s']:,.0f} lines/s |",
            f"| batch / HTTP | {f['ratio']:.2f} x |",
            f"| interactive p50 / p99, alone ({INTERACTIVE_CLIENTS} clients) | "
            f"{f['interactive_p50_ms_alone']:.1f} / {f['interactive_p99_ms_alone']:.1f} ms |",
            f"| interactive p50 / p99, while a batch runs | "
            f"{f['interactive_p50_ms_during']:.1f} / {f['interactive_p99_ms_during']:.1f} ms |",
            "",
            "Interactive requests go first in the model's queue, so they never wait behind queued lines; "
            "what the batch costs them here is lingo's own CPU (one event loop proxies both, and the fake "
            "replicas answer in 10 ms). With real models the replicas are the limit and the batch fills "
            "their free slots.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.batchapi", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--lines", type=int, default=10_000, help="lines per batch (short mode: 1000)")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        figures = run(Path(workdir), args.lines, docs=not args.no_docs)
    print(render(figures))


if __name__ == "__main__":
    main()
