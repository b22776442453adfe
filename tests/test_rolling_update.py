"""A rolling update drops nothing: two `lingo serve` processes behind a round-robin balancer, under
steady plain and streaming load, are replaced one after the other the way Kubernetes does it."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import openai

from tests.balancer import RoundRobinBalancer
from tests.conftest import FakeModelProcess, free_port

#: Seconds a replaced lingo keeps serving after SIGTERM (LINGO_SHUTDOWN_DELAY).
SHUTDOWN_DELAY = 3.0
#: Failed readiness probes before the balancer drops an endpoint (kubelet's failureThreshold).
PROBE_FAILURES = 3
#: Seconds between readiness probes.
PROBE_PERIOD = 0.2
#: Concurrent clients, half of them streaming.
CLIENTS = 8
#: Upper bound on requests per client, so the load is bounded in count as well as time.
MAX_REQUESTS = 2000


@dataclass
class LingoProcess:
    """One `lingo serve` process on free ports."""

    process: subprocess.Popen[bytes]
    proxy: tuple[str, int]
    health: str
    #: Its output.
    log: Path


def start_lingo(tmp_path: Path, name: str, models_file: Path) -> LingoProcess:
    proxy, health = free_port(), free_port()
    log = tmp_path / f"{name}.log"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "lingo", "serve",
            "--platform", "local",
            "--models-file", str(models_file),
            "--proxy-address", f"127.0.0.1:{proxy}",
            "--health-probe-bind-address", f"127.0.0.1:{health}",
            "--metrics-bind-address", f"127.0.0.1:{free_port()}",
            "--stats-address", f"127.0.0.1:{free_port()}",
            "--shutdown-delay", f"{SHUTDOWN_DELAY}s",
            "--shutdown-grace", "10s",
            "--log-level", "warning",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    return LingoProcess(process, ("127.0.0.1", proxy), f"http://127.0.0.1:{health}", log)


async def ready(session: aiohttp.ClientSession, lingo: LingoProcess) -> bool:
    try:
        async with session.get(lingo.health + "/readyz") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def ready_lingo(
    session: aiohttp.ClientSession, tmp_path: Path, name: str, models_file: Path, started: list[LingoProcess]
) -> LingoProcess:
    """A started, ready lingo. Ports are picked free but may be taken by another test before lingo
    binds them; then it tries again on new ones."""
    loop = asyncio.get_running_loop()
    for attempt in range(3):
        lingo = start_lingo(tmp_path, f"{name}-{attempt}", models_file)
        started.append(lingo)
        deadline = loop.time() + 20
        while not await ready(session, lingo):
            if lingo.process.poll() is not None:
                output = lingo.log.read_text()
                assert "cannot listen" in output, f"lingo exited while starting: {output[-2000:]}"
                break
            assert loop.time() < deadline, "lingo not ready within 20s"
            await asyncio.sleep(0.05)
        else:
            return lingo
    raise AssertionError("lingo found no free ports in 3 tries")


async def wait_unready(session: aiohttp.ClientSession, lingo: LingoProcess, timeout: float = 10.0) -> None:
    """Probe like a kubelet: return after PROBE_FAILURES failed probes in a row."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    failures = 0
    while failures < PROBE_FAILURES:
        assert loop.time() < deadline, f"/readyz did not fail within {timeout}s of SIGTERM"
        failures = 0 if await ready(session, lingo) else failures + 1
        await asyncio.sleep(PROBE_PERIOD)


@dataclass
class Load:
    """Steady traffic through the balancer until stopped; counts every outcome."""

    url: str
    #: Outcomes by kind: "ok", or the exception's class name.
    outcomes: Counter[str] = field(default_factory=Counter)
    #: The first few failures, for the assertion message.
    errors: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def client(self, streaming: bool) -> None:
        # No SDK retries: a retried failure would hide exactly what this test looks for.
        client = openai.AsyncOpenAI(base_url=self.url + "/v1", api_key="x", max_retries=0, timeout=30)
        messages = [{"role": "user", "content": "hello"}]
        try:
            for _ in range(MAX_REQUESTS):
                if self.stop.is_set():
                    return
                try:
                    if streaming:
                        stream = await client.chat.completions.create(
                            model="m",
                            messages=messages,
                            stream=True,
                            max_tokens=5,  # type: ignore[arg-type]
                        )
                        chunks = [chunk async for chunk in stream]
                        assert chunks and chunks[-1].choices[0].finish_reason == "length"
                    else:
                        answer = await client.chat.completions.create(
                            model="m",
                            messages=messages,
                            max_tokens=5,  # type: ignore[arg-type]
                        )
                        assert answer.choices
                    self.outcomes["ok"] += 1
                except (openai.OpenAIError, AssertionError) as exc:
                    self.outcomes[type(exc).__name__] += 1
                    if len(self.errors) < 5:
                        self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            await client.close()

    async def until(self, total: int, timeout: float = 20.0) -> None:
        """Wait until `total` requests have finished (ok or not)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while sum(self.outcomes.values()) < total:
            assert loop.time() < deadline, f"load stalled at {self.outcomes}"
            await asyncio.sleep(0.02)


async def test_rolling_update_behind_a_balancer_drops_no_request(tmp_path: Path) -> None:
    backend = FakeModelProcess("--token-delay", "0.02", "--latency", "0.01").wait_ready()
    models_file = tmp_path / "models.yaml"
    models_file.write_text(
        textwrap.dedent(
            f"""
            models:
              - name: m
                endpoints: ["{backend.url}"]
            """
        )
    )
    balancer = RoundRobinBalancer()
    url = await balancer.start()
    everything: list[LingoProcess] = []
    lingos: list[LingoProcess] = []
    load = Load(url)
    clients: list[asyncio.Task[None]] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            for i in range(2):
                lingos.append(await ready_lingo(session, tmp_path, f"lingo-{i}", models_file, everything))
                balancer.add(lingos[-1].proxy)
            clients = [asyncio.create_task(load.client(streaming=i % 2 == 1)) for i in range(CLIENTS)]
            await load.until(50)
            for slot, old in enumerate(list(lingos)):
                served_before = balancer.connections[old.proxy]
                old.process.send_signal(signal.SIGTERM)
                # The balancer (a Service's endpoints) notices only after a few failed probes;
                # until then new connections keep arriving at the old lingo, which must serve them.
                await wait_unready(session, old)
                assert old.process.poll() is None, "lingo must keep serving through the shutdown delay"
                balancer.remove(old.proxy)
                new = await ready_lingo(session, tmp_path, f"lingo-{slot}-new", models_file, everything)
                balancer.add(new.proxy)
                lingos[slot] = new
                assert await asyncio.to_thread(old.process.wait, 20) == 0
                assert balancer.connections[old.proxy] > served_before, "old lingo got traffic after SIGTERM"
                done = sum(load.outcomes.values())
                await load.until(done + 50)
            load.stop.set()
            await asyncio.wait_for(asyncio.gather(*clients), 30)
    finally:
        load.stop.set()
        for task in clients:
            task.cancel()
        await balancer.close()
        for lingo in everything:
            lingo.process.kill()
            lingo.process.wait(10)
        backend.kill()
    assert load.outcomes["ok"] >= 150
    assert set(load.outcomes) == {"ok"}, f"failed requests: {load.outcomes} {load.errors}"
    # Keep-alive connections stay where they are: the first new lingo takes over those the second
    # old one closed; the last one added may see none before the load stops.
    assert balancer.connections[lingos[0].proxy], "the new lingo served"
    assert balancer.refused == 0
