"""Batch throughput: messages/s end to end through each broker, next to HTTP requests/s of the same
lingo process, against the same fast backend (nginx).

One `lingo serve` (pinned to the proxy core, like every proxy in these benchmarks) runs one stream per
broker: NATS JetStream, the Pub/Sub emulator, Redis Streams, SQS (a moto server) and Kafka (Tansu);
this process publishes N envelopes to one broker at a time, collects the N answers and times it from
the first publish to the last answer. HTTP is `wrk -c64` against the same process. The ratio
batch/HTTP is the figure to watch (aim: at least 0.5). Brokers that are missing are skipped. moto and
Tansu are test servers in one process each: their own speed bounds those figures.

`python -m benchmarks.batch [--messages N] [--brokers nats,pubsub,redisstream,awssqs,kafka]`;
`main()` returns the figures as a dict.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from benchmarks import load, targets
from benchmarks.brokers import DRIVERS, Driver

NATS_URL = os.environ.get("NATS_SERVER_URL") or "nats://127.0.0.1:4222"
#: Handlers per stream: enough to keep the backend busy while messages cross the broker.
MAX_HANDLERS = 256
#: Publishes in flight at once from this process.
PUBLISH_WINDOW = 512


def envelope(index: int, prefix: str = "b") -> bytes:
    metadata = {"custom_id": f"{prefix}-{index}"}
    return orjson.dumps({"path": targets.PATH, "metadata": metadata, "body": targets.REQUEST})


# -- NATS ---------------------------------------------------------------------------------------------


async def _nats_setup(subject: str, stream: str) -> None:
    import nats
    from nats.js.api import RetentionPolicy

    client = await nats.connect(NATS_URL)
    await client.jetstream().add_stream(name=stream, subjects=[subject], retention=RetentionPolicy.WORK_QUEUE)
    await client.close()


async def _nats_run(requests: str, responses: str, stream: str, count: int) -> float:
    """Publish `count` envelopes to `requests`, wait for `count` answers on `responses`; seconds."""
    import nats
    import nats.errors

    client = await nats.connect(NATS_URL)
    js = client.jetstream()
    pull = await js.pull_subscribe(responses, durable="bench", stream=stream)
    window = asyncio.Semaphore(PUBLISH_WINDOW)
    seen: set[str] = set()

    async def publish(index: int) -> None:
        try:
            await js.publish(requests, envelope(index), timeout=30)
        finally:
            window.release()

    async def collect() -> None:
        while len(seen) < count:
            try:
                messages = await pull.fetch(512, timeout=5)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            for message in messages:
                seen.add(orjson.loads(message.data)["metadata"]["custom_id"])
                await message.ack()

    started = time.perf_counter()
    collector = asyncio.create_task(collect())
    tasks = []
    for index in range(count):
        await window.acquire()
        tasks.append(asyncio.create_task(publish(index)))
    await asyncio.gather(*tasks)
    await asyncio.wait_for(collector, 300)
    elapsed = time.perf_counter() - started
    await client.close()
    return elapsed


async def _nats_cleanup(*streams: str) -> None:
    import nats

    client = await nats.connect(NATS_URL)
    for stream in streams:
        with contextlib.suppress(Exception):
            await client.jetstream().delete_stream(stream)
    await client.close()


# -- Pub/Sub emulator ---------------------------------------------------------------------------------


def start_emulator(workdir: Path) -> tuple[subprocess.Popen, str] | None:
    """The Pub/Sub emulator on a free port, or None where it is not installed."""
    listing = subprocess.run(
        ["dpkg", "-L", "google-cloud-cli-pubsub-emulator"], capture_output=True, text=True, check=False
    )
    launcher = next((p for p in listing.stdout.splitlines() if p.endswith("bin/cloud-pubsub-emulator")), None)
    if launcher is None or shutil.which("java") is None:
        return None
    port = targets.free_port()
    log = workdir / "pubsub-emulator.log"
    process = targets.spawn([launcher, "--host=127.0.0.1", f"--port={port}"], log, targets.LOAD_CORES)
    deadline = time.monotonic() + 30
    while b"Server started" not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the Pub/Sub emulator did not start")
        time.sleep(0.1)
    return process, f"127.0.0.1:{port}"


def _pubsub_setup(project: str, unique: str) -> dict[str, str]:
    from google.cloud import pubsub_v1

    names = {
        "req_topic": f"projects/{project}/topics/req-{unique}",
        "req_sub": f"projects/{project}/subscriptions/req-{unique}",
        "resp_topic": f"projects/{project}/topics/resp-{unique}",
        "resp_sub": f"projects/{project}/subscriptions/resp-{unique}",
    }
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    for kind in ("req", "resp"):
        publisher.create_topic(name=names[f"{kind}_topic"])
        subscriber.create_subscription(name=names[f"{kind}_sub"], topic=names[f"{kind}_topic"])
    subscriber.close()
    return names


class PubSubCollector:
    """One streaming pull on the responses subscription for the whole benchmark.

    (A pull cancelled and reopened on the emulator strands the messages it had been sent until
    their ack deadline: reusing one stream keeps the figures about lingo.)
    """

    def __init__(self, subscription: str) -> None:
        from google.cloud import pubsub_v1

        self._lock = threading.Lock()
        self._seen: set[str] = set()
        self._wanted = 0
        self._done = threading.Event()
        self._client = pubsub_v1.SubscriberClient()
        flow = pubsub_v1.types.FlowControl(max_messages=2000)
        self._future = self._client.subscribe(subscription, self._on_message, flow_control=flow)

    def _on_message(self, message: object) -> None:
        custom_id = orjson.loads(message.data)["metadata"]["custom_id"]  # type: ignore[attr-defined]
        message.ack()  # type: ignore[attr-defined]
        with self._lock:
            self._seen.add(custom_id)
            if self._wanted and len(self._seen) >= self._wanted:
                self._done.set()

    def expect(self, count: int) -> None:
        with self._lock:
            self._seen.clear()
            self._wanted = count
            self._done.clear()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    @property
    def seen(self) -> int:
        return len(self._seen)

    def close(self) -> None:
        self._future.cancel()
        self._client.close()


def _pubsub_run(names: dict[str, str], collector: PubSubCollector, prefix: str, count: int) -> float:
    """Publish `count` envelopes, wait for their `count` answers; seconds."""
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_messages=500, max_latency=0.01)
    )
    collector.expect(count)
    started = time.perf_counter()
    futures = [publisher.publish(names["req_topic"], envelope(i, prefix)) for i in range(count)]
    for published in futures:
        published.result(60)
    finished = collector.wait(300)
    elapsed = time.perf_counter() - started
    if not finished:
        raise TimeoutError(f"Pub/Sub: {collector.seen}/{count} answers in 300 s")
    return elapsed


# -- the run ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batch", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages per broker (default 5000)")
    parser.add_argument("--pubsub-messages", type=int, default=2000, help="messages through Pub/Sub")
    parser.add_argument("--seconds", type=float, default=5.0, help="wrk duration for the HTTP figure")
    parser.add_argument("--sqs-messages", type=int, default=1000, help="messages through SQS (moto)")
    parser.add_argument(
        "--brokers",
        default=",".join(["nats", "pubsub", *DRIVERS]),
        help="comma list of brokers to measure (default: all)",
    )
    args = parser.parse_args(argv if argv is not None else [])
    chosen = {name.strip() for name in args.brokers.split(",") if name.strip()}
    targets.raise_nofile()
    targets.pin(targets.LOAD_CORES)  # like wrk: the harness stays off lingo's core
    workdir = Path(tempfile.mkdtemp(prefix="lingo-bench-batch-"))
    unique = uuid.uuid4().hex[:8]
    figures: dict = {"messages": args.messages, "max_handlers": MAX_HANDLERS}
    servers: list[targets.Server] = []
    emulator: tuple[subprocess.Popen, str] | None = None
    nats_names = (f"bench.{unique}.req", f"bench.{unique}.resp", f"BENCHREQ_{unique}", f"BENCHRESP_{unique}")
    have_nats = _reachable(NATS_URL) and "nats" in chosen
    drivers: list[Driver] = []
    try:
        backend = targets.nginx_backend(workdir)
        servers.append(backend)
        messengers = []
        env: dict[str, str] = {"NATS_SERVER_URL": NATS_URL}
        if have_nats:
            req, resp, req_stream, resp_stream = nats_names
            asyncio.run(_nats_setup(resp, resp_stream))
            messengers.append(f"nats://{req}?stream={req_stream}|nats://{resp}|{MAX_HANDLERS}")
        emulator = start_emulator(workdir) if "pubsub" in chosen else None
        names: dict[str, str] = {}
        if emulator is not None:
            os.environ["PUBSUB_EMULATOR_HOST"] = env["PUBSUB_EMULATOR_HOST"] = emulator[1]
            names = _pubsub_setup("lingo-bench", unique)
            messengers.append(
                f"gcppubsub://{names['req_sub']}|gcppubsub://{names['resp_topic']}|{MAX_HANDLERS}"
            )
        for name, kind in DRIVERS.items():
            if name not in chosen:
                continue
            driver = kind(unique, MAX_HANDLERS, envelope)
            reason = driver.unavailable()
            if reason is not None:
                figures[name] = f"skipped: {reason}"
                continue
            drivers.append(driver)
            _run(driver.setup(workdir))
            messengers.append(driver.messenger())
            env.update(driver.environment())
        env["MESSENGER_URLS"] = ",".join(messengers)
        lingo = targets.lingo("lingo-batch", workdir, targets.static_models(backend.url), env=env)
        servers.append(lingo)

        script = load.wrk_script(workdir)
        load.wrk(lingo.url, 16, 1, script)  # warm up
        pid = lingo.process.pid
        cpu, started = cpu_seconds(pid), time.perf_counter()
        http = load.wrk(lingo.url, 64, args.seconds, script)
        http_busy = (cpu_seconds(pid) - cpu) / (time.perf_counter() - started)
        figures["http_rps"] = round(http.rps, 1)
        figures["http_lingo_cpu"] = round(http_busy, 2)
        figures["http_rps_per_lingo_core"] = round(http.rps / http_busy, 1) if http_busy else None
        figures["http_p99_ms"] = round(http.p99_ms, 2)
        print(f"HTTP (wrk -c64): {http.rps:.0f} requests/s, lingo CPU {http_busy:.0%}", flush=True)

        if have_nats:
            req, resp, _, resp_stream = nats_names
            _run(_nats_run(req, resp, resp_stream, 500))  # warm up
            cpu = cpu_seconds(pid)
            elapsed = _run(_nats_run(req, resp, resp_stream, args.messages))
            busy = (cpu_seconds(pid) - cpu) / elapsed
            rate = args.messages / elapsed
            figures["nats_msgs_per_s"] = round(rate, 1)
            figures["nats_vs_http"] = round(rate / http.rps, 2)
            figures["nats_lingo_cpu"] = round(busy, 2)
            # Messages per second per fully used lingo core: what lingo alone would sustain.
            figures["nats_msgs_per_lingo_core_s"] = round(rate / busy, 1) if busy else None
            print(
                f"NATS JetStream: {rate:.0f} messages/s ({rate / http.rps:.2f}x HTTP), lingo CPU {busy:.0%}",
                flush=True,
            )
        elif "nats" in chosen:
            figures["nats"] = f"skipped: no NATS server at {NATS_URL}"
        if emulator is not None:
            collector = PubSubCollector(names["resp_sub"])
            try:
                _pubsub_run(names, collector, "warm", 200)
                cpu, emulator_cpu = cpu_seconds(pid), cpu_seconds(emulator[0].pid)
                elapsed = _pubsub_run(names, collector, "run", args.pubsub_messages)
                busy = (cpu_seconds(pid) - cpu) / elapsed
                emulator_busy = (cpu_seconds(emulator[0].pid) - emulator_cpu) / elapsed
            finally:
                collector.close()
            rate = args.pubsub_messages / elapsed
            figures["pubsub_messages"] = args.pubsub_messages
            figures["pubsub_msgs_per_s"] = round(rate, 1)
            figures["pubsub_vs_http"] = round(rate / http.rps, 2)
            figures["pubsub_lingo_cpu"] = round(busy, 2)
            figures["pubsub_msgs_per_lingo_core_s"] = round(rate / busy, 1) if busy else None
            figures["pubsub_emulator_cpu"] = round(emulator_busy, 2)
            print(
                f"Pub/Sub emulator: {rate:.0f} messages/s ({rate / http.rps:.2f}x HTTP), "
                f"lingo CPU {busy:.0%}, emulator CPU {emulator_busy:.0%}",
                flush=True,
            )
        elif "pubsub" in chosen:
            figures["pubsub"] = "skipped: Pub/Sub emulator not installed"
        for driver in drivers:
            count = args.sqs_messages if driver.name == "awssqs" else args.messages
            try:
                _run(driver.run("warm", min(200, count)))
                cpu = cpu_seconds(pid)
                elapsed = _run(driver.run("run", count))
            except Exception as exc:  # one broker failing does not lose the others' figures
                figures[driver.name] = f"failed: {exc!r}"
                continue
            busy = (cpu_seconds(pid) - cpu) / elapsed
            rate = count / elapsed
            figures[f"{driver.name}_messages"] = count
            figures[f"{driver.name}_msgs_per_s"] = round(rate, 1)
            figures[f"{driver.name}_vs_http"] = round(rate / http.rps, 2)
            figures[f"{driver.name}_lingo_cpu"] = round(busy, 2)
            print(
                f"{driver.name}: {rate:.0f} messages/s ({rate / http.rps:.2f}x HTTP), lingo CPU {busy:.0%}",
                flush=True,
            )
    finally:
        for driver in drivers:
            with contextlib.suppress(Exception):
                _run(driver.close())
        for server in reversed(servers):
            server.stop()
        if emulator is not None:
            emulator[0].terminate()
            emulator[0].wait(10)
        if have_nats:
            asyncio.run(_nats_cleanup(nats_names[2], nats_names[3]))
    return figures


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process used so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run(coroutine: Any) -> Any:
    """Run the NATS client side on uvloop where installed (the harness must not be the bottleneck)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def _reachable(url: str) -> bool:
    import socket

    host, _, port = url.split("://")[-1].partition(":")
    try:
        with socket.create_connection((host, int(port or 4222)), timeout=1):
            return True
    except OSError:
        return False


if __name__ == "__main__":
    print(orjson.dumps(main(sys.argv[1:]), option=orjson.OPT_INDENT_2).decode())
