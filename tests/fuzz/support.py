"""Fuzzing harness: one lingo on its own event loop in a thread, driven over raw sockets.

Hypothesis drives plain (synchronous) test functions; each example talks to lingo through the strict
raw client of `tests.faults.rawhttp`, so requests can be as malformed as wanted and every byte of the
answer is checked. No event loop is shared with pytest-asyncio.
"""

from __future__ import annotations

import asyncio
import textwrap
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import orjson
from hypothesis import HealthCheck, settings

from lingo.app import Lingo
from tests.conftest import test_settings
from tests.faults.rawhttp import Malformed, Reply, Truncated, exchange, http_get, http_post, read_reply

__all__ = [
    "LingoThread",
    "Malformed",
    "Reply",
    "Truncated",
    "assert_still_serving",
    "exchange",
    "fuzz_settings",
    "http_get",
    "http_post",
    "read_reply",
]

T = TypeVar("T")


def fuzz_settings(examples: int) -> settings:
    """Bounded and reproducible: the same examples on every run, no example database written."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


class LingoThread:
    """An event loop in a daemon thread, and a `Lingo` started on it; `call` runs coroutines there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="lingo-fuzz", daemon=True)
        self.thread.start()
        self._lingo: Lingo | None = None

    def start(self, tmp: Path, models_yaml: str, **overrides: object) -> LingoThread:
        path = tmp / "models.yaml"
        path.write_text(textwrap.dedent(models_yaml))
        settings = test_settings(models_file=str(path), log_dir=str(tmp / "logs"), **overrides)
        self._lingo = self.call(self._start(Lingo(settings)))
        return self

    @staticmethod
    async def _start(lingo: Lingo) -> Lingo:
        await lingo.start()
        return lingo

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    @property
    def lingo(self) -> Lingo:
        assert self._lingo is not None, "lingo not started"
        return self._lingo

    @property
    def port(self) -> int:
        return self.lingo.addresses["proxy"][1]

    def stop(self) -> None:
        try:
            if self._lingo is not None:
                self.call(self._lingo.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def assert_still_serving(lingo: LingoThread, model: str) -> None:
    """Lingo answers its health check and a valid request after the fuzzing."""
    health = http_get(lingo.lingo.addresses["health"][1], "/healthz")
    assert health.status == 200, health
    reply = http_post(lingo.port, "/v1/completions", orjson.dumps({"model": model, "prompt": "x"}))
    assert reply.status == 200, reply
    assert orjson.loads(reply.body)["choices"], reply
