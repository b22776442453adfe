"""The local platform: replicas as processes, from zero and back, crash replacement, clean shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import aiohttp
import openai
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port, wait_for


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


async def test_model_scales_from_zero_and_back_to_zero(start_lingo) -> None:
    lingo = await start_lingo(
        """
        models:
          - name: m
            command: [lingo, fake-model, --port, "{port}"]
            scale_down_delay: 0.5
        """
    )
    platform = lingo.platform
    client = openai.AsyncOpenAI(base_url=lingo.url() + "/v1", api_key="x", max_retries=0)
    await client.completions.create(model="m", prompt="x")
    [replica] = platform.replicas["m"]  # type: ignore[attr-defined]
    assert replica.ready
    await wait_for(lambda: not platform.replicas["m"], timeout=15)  # type: ignore[attr-defined]
    assert replica.process.returncode is not None
    assert lingo.registry.queues["m"].endpoints == {}
    assert replica.log_path.exists()
    await client.close()


async def test_crashed_replica_is_noticed_and_replaced(start_lingo) -> None:
    lingo = await start_lingo(
        """
        models:
          - name: m
            command: [lingo, fake-model, --port, "{port}"]
            min_replicas: 1
        """
    )
    platform = lingo.platform
    queue = lingo.registry.queues["m"]
    await wait_for(lambda: len(queue.endpoints) == 1)
    [first] = platform.replicas["m"]  # type: ignore[attr-defined]
    os.kill(first.process.pid, signal.SIGKILL)
    await wait_for(lambda: first.url not in queue.endpoints, timeout=5)
    await wait_for(lambda: len(queue.endpoints) == 1, timeout=15)
    [second] = platform.replicas["m"]  # type: ignore[attr-defined]
    assert second is not first and second.ready
    client = openai.AsyncOpenAI(base_url=lingo.url() + "/v1", api_key="x", max_retries=0)
    assert (await client.completions.create(model="m", prompt="x")).choices
    await client.close()


def serve(tmp_path: Path, models: str, *flags: str) -> tuple[subprocess.Popen[bytes], str, str, str]:
    """`lingo serve` as a subprocess, with its proxy, health and metrics base URLs."""
    path = tmp_path / "models.yaml"
    path.write_text(textwrap.dedent(models))
    proxy, health, metrics = free_port(), free_port(), free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lingo",
            "serve",
            "--models-file",
            str(path),
            "--platform",
            "local",
            "--proxy-address",
            f"127.0.0.1:{proxy}",
            "--health-probe-bind-address",
            f"127.0.0.1:{health}",
            "--metrics-bind-address",
            f"127.0.0.1:{metrics}",
            "--stats-address",
            f"127.0.0.1:{free_port()}",
            "--log-dir",
            str(tmp_path / "logs"),
            *flags,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return process, f"http://127.0.0.1:{proxy}", f"http://127.0.0.1:{health}", f"http://127.0.0.1:{metrics}"


async def wait_ready(health: str) -> None:
    async def ready() -> bool:
        try:
            async with aiohttp.ClientSession() as s, s.get(health + "/readyz") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    for _ in range(300):
        if await ready():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("lingo did not become ready")


TWO_MODELS = """
models:
  - name: slow
    command: [lingo, fake-model, --port, "{port}", --latency, "1.5"]
    min_replicas: 1
    concurrency: 1
  - name: idle
    command: [lingo, fake-model, --port, "{port}"]
    min_replicas: 1
"""


async def test_sigterm_fails_readiness_keeps_serving_then_drains_and_leaves_no_child(tmp_path: Path) -> None:
    process, proxy, health, metrics = serve(
        tmp_path, TWO_MODELS, "--shutdown-delay", "1s", "--shutdown-grace", "10s"
    )
    try:
        await wait_ready(health)
        await wait_for(lambda: len(children(process.pid)) == 2, timeout=10)
        replicas = children(process.pid)
        async with aiohttp.ClientSession() as session:

            async def ask() -> int:
                async with session.post(proxy + "/v1/completions", json={"model": "slow"}) as r:
                    await r.read()
                    return r.status

            async def gauges() -> tuple[float, float]:
                async with session.get(metrics + "/metrics") as r:
                    text = await r.text()
                found: dict[str, float] = {}
                for family in text_string_to_metric_families(text):
                    for sample in family.samples:
                        if sample.labels.get("model") == "slow":  # summed over the queued classes
                            found[sample.name] = found.get(sample.name, 0.0) + sample.value
                return found["lingo_requests_in_flight"], found["lingo_requests_queued"]

            async def until(in_flight: int, queued: int) -> None:
                for _ in range(500):
                    if await gauges() == (in_flight, queued):
                        return
                    await asyncio.sleep(0.02)
                raise AssertionError(f"never saw {in_flight} in flight and {queued} queued")

            async def ready_status() -> int:
                async with session.get(health + "/readyz") as r:
                    return r.status

            in_flight = asyncio.create_task(ask())
            await until(in_flight=1, queued=0)  # running on the replica (1.5 s latency)
            queued = asyncio.create_task(ask())
            await until(in_flight=1, queued=1)  # waiting for the only slot
            process.send_signal(signal.SIGTERM)
            for _ in range(100):
                if await ready_status() == 503:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("/readyz kept answering 200 after SIGTERM")
            # Within the shutdown delay a new connection is still accepted and its request queued.
            late = asyncio.create_task(ask())
            await until(in_flight=1, queued=2)
            assert process.poll() is None
            assert [await in_flight, await queued, await late] == [200, 200, 200]
        assert await asyncio.to_thread(process.wait, 20) == 0
        assert not [pid for pid in replicas if alive(pid)]
    finally:
        process.kill()


async def test_a_second_signal_skips_the_rest_of_the_shutdown_delay(tmp_path: Path) -> None:
    static = "models: [{name: x, endpoints: ['http://127.0.0.1:9']}]"
    process, _, health, _ = serve(tmp_path, static, "--shutdown-delay", "60s")
    try:
        await wait_ready(health)
        process.send_signal(signal.SIGTERM)
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                async with session.get(health + "/readyz") as r:
                    if r.status == 503:
                        assert await r.text() == "shutting down"
                        break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("/readyz kept answering 200 after SIGTERM")
        assert process.poll() is None, "still serving within the delay"
        process.send_signal(signal.SIGINT)  # an impatient Ctrl-C
        assert await asyncio.to_thread(process.wait, 15) == 0
    finally:
        process.kill()


async def test_requests_still_queued_when_the_drain_ends_get_503(start_lingo) -> None:
    lingo = await start_lingo(
        """
        models:
          - name: never
            command: [python3, -c, "import time; time.sleep(60)", "{port}"]
        """,
        shutdown_grace=1.0,
    )
    queue = lingo.registry.queues["never"]
    async with aiohttp.ClientSession() as session:

        async def ask() -> tuple[int, dict]:
            async with session.post(lingo.url() + "/v1/completions", json={"model": "never"}) as r:
                return r.status, await r.json()

        waiting = asyncio.create_task(ask())
        await wait_for(lambda: queue.queued == 1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await lingo.stop()
        status, body = await waiting
    assert status == 503 and body["error"]["code"] == "shutting_down"
    assert loop.time() - started >= 0.9, "a queued request is given the drain time before 503"


async def test_replicas_die_with_lingo_even_when_it_is_killed(tmp_path: Path) -> None:
    process, _, health, _ = serve(tmp_path, TWO_MODELS)
    try:
        await wait_ready(health)
        await wait_for(lambda: len(children(process.pid)) == 2, timeout=10)
        replicas = children(process.pid)
        process.kill()
        process.wait(10)
        await wait_for(lambda: not [pid for pid in replicas if alive(pid)], timeout=10)
    finally:
        process.kill()


async def test_bad_models_file_fails_at_start_with_a_clear_message(tmp_path: Path) -> None:
    process, _, _, _ = serve(tmp_path, "models: [{name: a}]")
    output, _ = process.communicate(timeout=20)
    assert process.returncode == 2
    assert b"configuration error" in output and b"exactly one of 'command' or 'endpoints'" in output
