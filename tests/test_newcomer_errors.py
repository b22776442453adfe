"""Mistakes a newcomer makes end in one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import StartLingo, wait_for


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port some other program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def lingo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lingo", *args], capture_output=True, text=True, timeout=60, check=False
    )


def assert_one_clear_line(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    last = result.stderr.strip().splitlines()[-1]
    for phrase in phrases:
        assert phrase in last, f"{phrase!r} not in {last!r}"


def test_demo_on_a_busy_port_says_so(busy_port: int) -> None:
    result = lingo("demo", "--port", str(busy_port))
    assert_one_clear_line(result, "lingo demo:", "Address already in use", "--port")
    # The demo listens on the port and the three after it; whichever is taken is named.
    assert any(f"127.0.0.1:{busy_port + i}:" in result.stderr for i in range(4)), result.stderr


@pytest.mark.parametrize("port", ["70000", "65534", "0", "http"])
def test_demo_with_an_impossible_port_says_so(port: str) -> None:
    result = lingo("demo", "--port", port)
    assert_one_clear_line(result, "lingo demo: error: argument --port:", port)


def test_fake_model_on_a_busy_port_says_so(busy_port: int) -> None:
    result = lingo("fake-model", "--port", str(busy_port))
    assert_one_clear_line(result, "lingo fake-model:", f"127.0.0.1:{busy_port}", "Address already in use")


def test_fake_model_with_an_impossible_port_says_so() -> None:
    assert_one_clear_line(lingo("fake-model", "--port", "70000"), "argument --port:", "70000")


def test_serve_on_a_busy_port_says_so(busy_port: int, tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text("models: [{name: x, endpoints: ['http://127.0.0.1:9']}]")
    ports = ("--health-probe-bind-address", "127.0.0.1:0", "--metrics-bind-address", "127.0.0.1:0")
    result = lingo(
        "serve",
        *("--platform", "local", "--models-file", str(models), *ports),
        *("--stats-address", "127.0.0.1:0", "--proxy-address", f"127.0.0.1:{busy_port}"),
    )
    assert_one_clear_line(
        result, "configuration error", f"proxy on 127.0.0.1:{busy_port}", "Address already in use"
    )


async def test_model_command_not_on_path_is_logged_once_and_told_to_the_client(
    start_lingo: StartLingo, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lingo")
    lingo_ = await start_lingo(
        """
        models:
          - name: broken
            command: [no-such-model-server-xyz, --port, "{port}"]
        """,
        max_wait=3.0,
    )
    platform = lingo_.platform
    async with aiohttp.ClientSession() as session:
        request = session.post(lingo_.url() + "/v1/completions", json={"model": "broken"})
        waiting = asyncio.create_task(_answer(request))
        # The platform fails and retries several times while the request waits (LINGO_MAX_WAIT 3 s).
        await wait_for(lambda: platform._failures.get("broken", 0) >= 3, timeout=10)  # type: ignore[attr-defined]
        status, body = await asyncio.wait_for(waiting, 30)
    assert status == 503
    message = body["error"]["message"]
    assert "cannot start" in message and "no-such-model-server-xyz" in message, message
    assert "No such file or directory" in message
    records = [
        r for r in caplog.records if r.name == "lingo.platforms.local" and r.levelno >= logging.WARNING
    ]
    assert len(records) == 1, [r.getMessage() for r in records]
    assert records[0].exc_info is None, "one line, no traceback"
    assert "no-such-model-server-xyz" in str(records[0].__dict__.get("error"))


async def _answer(request) -> tuple[int, dict]:  # type: ignore[no-untyped-def]
    async with request as response:
        return response.status, await response.json()


async def test_model_that_exits_before_ready_is_named_in_the_503_with_its_last_words(
    start_lingo: StartLingo,
) -> None:
    lingo_ = await start_lingo(
        """
        models:
          - name: crashing
            command: [python3, -c, "import sys; sys.exit('model weights not found in /models')", "{port}"]
        """,
        max_wait=2.0,
    )
    async with aiohttp.ClientSession() as session:
        status, body = await _answer(
            session.post(lingo_.url() + "/v1/completions", json={"model": "crashing"})
        )
    assert status == 503
    message = body["error"]["message"]
    assert "cannot start: it exited with code 1 before it was ready" in message, message
    assert "model weights not found in /models" in message
