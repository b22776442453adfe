"""Shared fixtures: lingo in-process on free ports, and `lingo fake-model` processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from lingo.app import Lingo
from lingo.config import Settings
from lingo.platforms.local import die_with_parent

LOCAL = ("127.0.0.1", 0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_settings(**overrides: object) -> Settings:
    """Settings for an in-process lingo: loopback, free ports, fast autoscaler ticks."""
    base = Settings(
        platform="local",
        proxy_address=LOCAL,
        health_address=LOCAL,
        metrics_address=LOCAL,
        stats_address=LOCAL,
        autoscaling_interval=0.2,
        autoscaling_time_window=1.0,
        scale_down_delay=1.0,
        max_wait=30.0,
        shutdown_grace=5.0,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


StartLingo = Callable[..., Awaitable[Lingo]]


@pytest.fixture
async def start_lingo(tmp_path: Path) -> AsyncIterator[StartLingo]:
    """`await start_lingo(models_yaml, **settings)` → a started `Lingo`, stopped after the test."""
    started: list[Lingo] = []

    async def start(models_yaml: str, **overrides: object) -> Lingo:
        path = tmp_path / f"models-{len(started)}.yaml"
        path.write_text(textwrap.dedent(models_yaml))
        settings = test_settings(models_file=str(path), log_dir=str(tmp_path / "logs"), **overrides)
        lingo = Lingo(settings)
        await lingo.start()
        started.append(lingo)
        return lingo

    yield start
    for lingo in reversed(started):
        await lingo.stop()


class FakeModelProcess:
    """A `lingo fake-model` subprocess on a free port."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lingo", "fake-model", "--port", str(self.port), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,  # never outlives the test run, even if pytest is killed
        )

    def wait_ready(self, timeout: float = 15.0) -> FakeModelProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fake-model exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        raise TimeoutError(f"fake-model on port {self.port} not ready in {timeout}s")

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signum)
            self.process.wait(10)


@pytest.fixture
def fake_model() -> Iterator[Callable[..., FakeModelProcess]]:
    """`fake_model(*flags)` → a ready fake-model process, killed after the test."""
    processes: list[FakeModelProcess] = []

    def start(*args: str) -> FakeModelProcess:
        process = FakeModelProcess(*args).wait_ready()
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.kill()


async def wait_for(predicate: Callable[[], bool], timeout: float = 15.0, interval: float = 0.02) -> None:
    """Poll `predicate` until true; fail the test with a clear message on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        await asyncio.sleep(interval)


async def fetch_json(url: str) -> object:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.json(content_type=None)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a moto server (AWS SQS and SNS) started for this session; the AWS client variables
    (`AWS_ENDPOINT_URL`, test credentials, region) point at it while it runs."""
    from tests.batch.support import MotoServer

    reason = MotoServer.unavailable()
    if reason is not None:
        pytest.skip(reason)
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    server.start()
    saved = {key: os.environ.get(key) for key in server.environment()}
    os.environ.update(server.environment())
    try:
        yield server.url
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture(scope="session")
def kafka_brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`host:port` of a Kafka-protocol broker (Tansu) started for this session; KAFKA_BROKERS is set."""
    from tests.batch.support import TansuServer

    reason = TansuServer.unavailable()
    if reason is not None:
        pytest.skip(reason)
    server = TansuServer(tmp_path_factory.mktemp("tansu"))
    server.start()
    saved = os.environ.get("KAFKA_BROKERS")
    os.environ["KAFKA_BROKERS"] = server.address
    try:
        yield server.address
    finally:
        if saved is None:
            os.environ.pop("KAFKA_BROKERS", None)
        else:
            os.environ["KAFKA_BROKERS"] = saved
        server.stop()
