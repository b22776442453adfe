"""`lingo status`: the same facts as terminal tables, from a real lingo over HTTP."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import aiohttp
import orjson

from lingo.status.table import render
from tests.conftest import free_port


def lingo_status(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lingo", "status", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def static(url: str) -> str:
    return f"""
models:
  - name: static
    models: [static, small]
    endpoints: ["{url}"]
"""


async def test_lingo_status_prints_groups_and_endpoints_of_a_running_lingo(start_lingo, fake_model) -> None:
    backend = fake_model()
    lingo = await start_lingo(static(backend.url))
    body = orjson.dumps({"model": "small", "prompt": "hi", "max_tokens": 1})
    async with aiohttp.ClientSession() as session:
        for model in ("small", "missing"):
            body = orjson.dumps({"model": model, "prompt": "hi", "max_tokens": 1})
            async with session.post(lingo.url() + "/v1/completions", data=body) as r:
                await r.read()
    result = await asyncio.to_thread(lingo_status, "--url", lingo.url("health"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("lingo 0.1.0 · local · ready · leader")
    header = lines[2].split()
    assert header[:7] == ["GROUP", "MODELS", "DESIRED", "READY", "MIN", "MAX", "QUEUED"]
    assert header[-3:] == ["IN-FLIGHT", "BACKLOG", "ANSWERED"]
    row = lines[3].split()
    assert row[:7] == ["static", "static,small", "1", "1", "-", "-", "0"] and row[-1] == "200:1"
    assert lines[5].split() == ["ENDPOINT", "GROUP", "IN-FLIGHT"]
    assert lines[6].split() == [backend.url, "static", "0"]
    raw = await asyncio.to_thread(lingo_status, "--url", lingo.url("health") + "/status.json", "--json")
    assert orjson.loads(raw.stdout)["groups"][0]["name"] == "static"


def test_lingo_status_says_in_one_line_when_lingo_is_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = lingo_status("--url", url)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == f"lingo status: cannot reach lingo at {url}/status.json: Connection refused\n"


async def test_lingo_status_says_so_when_the_url_is_not_lingo(start_lingo, fake_model) -> None:
    backend = fake_model()
    lingo = await start_lingo(static(backend.url))
    result = await asyncio.to_thread(lingo_status, "--url", backend.url)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"lingo status: {backend.url}/status.json answered 404")
    metrics = await asyncio.to_thread(lingo_status, "--url", lingo.url("metrics") + "/metrics")
    assert metrics.returncode == 1 and "Traceback" not in metrics.stderr and metrics.stderr.count("\n") == 1


async def test_lingo_status_watch_redraws_until_interrupted(start_lingo, fake_model) -> None:
    lingo = await start_lingo(static(fake_model().url))
    args = ["status", "--watch", "--interval", "0.1", "--url", lingo.url("health")]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lingo", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None
    try:
        screens = 0
        while screens < 3:
            line = await asyncio.wait_for(process.stdout.readline(), 20)
            assert line, "lingo status --watch ended early"
            screens += line.startswith(b"\x1b[H\x1b[2Jlingo 0.1.0")
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_table_lists_classes_scale_events_streams_and_jobs() -> None:
    facts = {
        "version": "0.1.0",
        "time": 1000.0,
        "uptime": 61.2,
        "platform": "kubernetes",
        "ready": False,
        "leader": False,
        "classes": ["priority", "default"],
        "groups": [
            {
                "name": "chat",
                "models": ["chat"],
                "replicas": {"desired": 2, "ready": 1, "min": 0, "max": 3},
                "queued": {"priority": 1, "default": 4},
                "queued_total": 5,
                "in_flight": 8,
                "backlog": 12,
                "requests": {"200": 7, "429": 2},
                "endpoints": [{"url": "http://10.0.0.7:8000", "in_flight": 8, "retired": True}],
                "scale_events": [
                    {"time": 990.0, "from": 1, "to": 2, "reason": "demand 9.0 / concurrency 4"},
                    {"time": 400.0, "from": 0, "to": 1, "reason": "request waiting, no ready replica"},
                ],
            }
        ],
        "streams": [
            {
                "stream": "nats://req",
                "responses": "nats://resp",
                "model": None,
                "open": True,
                "in_flight": 3,
                "max_handlers": 100,
                "backlog": 12,
                "outcomes": {"answered": 5, "error": 1, "retried": 2, "invalid": 0, "nacked": 0},
            }
        ],
        "jobs": [{"id": "batch_1", "status": "in_progress", "request_counts": {"total": 9, "completed": 4}}],
    }
    assert render(facts) == (
        "lingo 0.1.0 · kubernetes · NOT READY · follower · up 61s\n"
        "\n"
        "GROUP   MODELS   DESIRED   READY   MIN   MAX   QUEUED   Q-PRIORITY   Q-DEFAULT   IN-FLIGHT"
        "   BACKLOG   ANSWERED\n"
        "chat    chat     2         1       0     3     5        1            4           8"
        "           12        200:7 429:2\n"
        "\n"
        "ENDPOINT                         GROUP   IN-FLIGHT\n"
        "http://10.0.0.7:8000 (leaving)   chat    8\n"
        "\n"
        "SCALED    GROUP   REPLICAS   REASON\n"
        "10s ago   chat    1 → 2      demand 9.0 / concurrency 4\n"
        "10m ago   chat    0 → 1      request waiting, no ready replica\n"
        "\n"
        "STREAM       MODEL   OPEN   IN-FLIGHT   BACKLOG   ANSWERED   ERROR   RETRIED   INVALID   NACKED\n"
        "nats://req   -       yes    3/100       12        5          1       2         0         0\n"
        "\n"
        "JOB       STATUS        COMPLETED   FAILED   TOTAL\n"
        "batch_1   in_progress   4           0        9\n"
    )
