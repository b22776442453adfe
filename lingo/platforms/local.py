"""The local platform: model replicas as local processes, started on demand (the embedded default).

Each replica is a command with `{port}` replaced by a free port. It gets traffic once its ready
path answers 200 (polled every few tens of milliseconds, so cold-start overhead stays small). A
replica that exits on its own is noticed, taken out of rotation and replaced, with backoff when it
keeps failing. Stopping drains the replica, then sends SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from lingo.platforms.models_file import LocalModel
from lingo.registry import Registry

log = logging.getLogger(__name__)

#: Seconds between readiness polls of a starting replica.
READY_POLL_INTERVAL = 0.02
#: Longest pause before replacing a replica that keeps crashing.
MAX_RESTART_BACKOFF = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:
    # Runs in the child before exec: the kernel sends SIGTERM if lingo dies, even by SIGKILL,
    # so no replica outlives the process that started it.
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _last_line(path: Path) -> str:
    """`: <last line of the replica's output>`, or '' when it wrote nothing."""
    try:
        with open(path, "rb") as output:
            output.seek(max(0, output.seek(0, os.SEEK_END) - 4096))
            lines = output.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return f": {lines[-1].strip()[:300]}" if lines else ""


class Replica:
    """One running (or starting, or stopping) replica process."""

    def __init__(self, model: LocalModel, port: int, log_path: Path) -> None:
        #: The models-file entry it was started from.
        self.model = model
        #: Port the replica listens on.
        self.port = port
        #: Base URL requests are sent to.
        self.url = f"http://127.0.0.1:{port}"
        #: Where its stdout and stderr go.
        self.log_path = log_path
        #: The process, once started.
        self.process: asyncio.subprocess.Process | None = None
        #: True once the ready path answered 200.
        self.ready = False
        #: True once lingo decided to stop it (an exit is then expected, not a crash).
        self.stopping = False
        #: The task that starts, watches and reaps it.
        self.task: asyncio.Task[None] | None = None


class LocalPlatform:
    """Runs the models-file entries as local processes; static entries are routed, never scaled."""

    def __init__(self, models: Sequence[LocalModel], log_dir: str = "") -> None:
        #: The models-file entries by group name.
        self.models = {model.group.name: model for model in models}
        #: Folder for per-replica log files.
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="lingo-replicas-"))
        #: Replicas asked for, per group.
        self.desired: dict[str, int] = {}
        #: Live replica objects per group (starting, ready or stopping).
        self.replicas: dict[str, list[Replica]] = {name: [] for name in self.models}
        self._registry: Registry | None = None
        self._session: aiohttp.ClientSession | None = None
        self._failures: dict[str, int] = {}
        #: Last start failure reported per group, so a failure that repeats is logged once.
        self._start_errors: dict[str, str] = {}
        self._serial = 0
        self._synced = False
        self._stopping = False
        self._background: set[asyncio.Task[None]] = set()

    async def start(self, registry: Registry) -> None:
        self._registry = registry
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0))
        registry.sync_models(model.group for model in self.models.values())
        for name, model in self.models.items():
            if model.endpoints:
                registry.set_endpoints(name, model.endpoints)
            elif model.group.min_replicas:
                await self.set_replicas(name, model.group.min_replicas)
        self._synced = True
        log.info("local platform started", extra={"models": len(self.models), "log_dir": str(self.log_dir)})

    def synced(self) -> bool:
        return self._synced

    async def get_replicas(self, group: str) -> int:
        return self.desired.get(group, 0)

    async def set_replicas(self, group: str, replicas: int) -> None:
        model = self.models.get(group)
        if model is None or not model.command:
            raise ValueError(f"{group!r} is not a scalable local model")
        self.desired[group] = replicas
        self._reconcile(group)

    async def stop(self) -> None:
        self._stopping = True
        every = [replica for replicas in self.replicas.values() for replica in replicas]
        await asyncio.gather(*(self._terminate(replica, drain=False) for replica in every))
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # -- reconciliation ---------------------------------------------------------------------------

    def _reconcile(self, group: str) -> None:
        if self._stopping:
            return
        model = self.models[group]
        live = [r for r in self.replicas[group] if not r.stopping]
        wanted = self.desired.get(group, 0)
        for _ in range(wanted - len(live)):
            self._launch(model)
        if len(live) > wanted:
            for replica in self._victims(group, live, len(live) - wanted):
                replica.stopping = True
                self._publish(group)
                self._spawn(self._terminate(replica, drain=True))

    def _victims(self, group: str, live: list[Replica], count: int) -> list[Replica]:
        """Stop starting replicas first, then the ready ones with the fewest requests in flight."""
        queue = self._registry.queues.get(group) if self._registry else None

        def load(replica: Replica) -> tuple[bool, int]:
            endpoint = queue.endpoints.get(replica.url) if queue else None
            return (replica.ready, endpoint.in_flight if endpoint else 0)

        return sorted(live, key=load)[:count]

    def _launch(self, model: LocalModel) -> None:
        self._serial += 1
        port = free_port()
        log_path = self.log_dir / f"{model.group.name}-{self._serial}-{port}.log"
        replica = Replica(model, port, log_path)
        self.replicas[model.group.name].append(replica)
        replica.task = self._spawn(self._run(replica))

    def _spawn(self, coroutine: object) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _publish(self, group: str) -> None:
        if self._registry is not None:
            ready = [r.url for r in self.replicas[group] if r.ready and not r.stopping]
            self._registry.set_endpoints(group, ready)

    # -- one replica's life -----------------------------------------------------------------------

    async def _run(self, replica: Replica) -> None:
        group = replica.model.group.name
        was_ready = False
        error: str | None = None
        code: int | None = None
        try:
            await self._start_process(replica)
            if await self._wait_ready(replica):
                replica.ready = was_ready = True
                self._failures[group] = 0
                self._clear_start_error(group)
                log.info("replica ready", extra={"model": group, "url": replica.url})
                self._publish(group)
            assert replica.process is not None
            code = await replica.process.wait()
        except asyncio.CancelledError:
            raise
        except OSError as exc:  # the command cannot be run at all: not found, not executable
            error = f"cannot run {replica.model.command[0]!r}: {exc.strerror or exc}"
        except Exception:
            log.exception("replica failed to start", extra={"model": group})
            code = -1
        self._forget(replica)
        if replica.stopping or self._stopping:
            return
        failures = self._failures.get(group, 0) + 1
        self._failures[group] = failures
        delay = min(MAX_RESTART_BACKOFF, 0.25 * 2 ** (failures - 1))
        if was_ready:
            log.warning(
                "replica exited; replacing it",
                extra={"model": group, "code": code, "log": str(replica.log_path), "retry_in": delay},
            )
        else:
            if error is None:
                error = f"it exited with code {code} before it was ready{_last_line(replica.log_path)}"
            self._report_start_error(group, error, replica, delay)
        await asyncio.sleep(delay)
        self._reconcile(group)

    def _report_start_error(self, group: str, error: str, replica: Replica, delay: float) -> None:
        """Log a start failure once while it repeats (retries go on quietly) and tell waiting clients."""
        if self._start_errors.get(group) != error:
            self._start_errors[group] = error
            log.warning(
                "replica cannot start; retrying with backoff",
                extra={"model": group, "error": error, "log": str(replica.log_path), "retry_in": delay},
            )
        if self._registry is not None:
            self._registry.set_start_error(group, error)

    def _clear_start_error(self, group: str) -> None:
        if self._start_errors.pop(group, None) is not None:
            log.info("replica starts again", extra={"model": group})
        if self._registry is not None:
            self._registry.set_start_error(group, None)

    async def _start_process(self, replica: Replica) -> None:
        command = [part.replace("{port}", str(replica.port)) for part in replica.model.command]
        if command[0] == "lingo":
            command[:1] = [sys.executable, "-m", "lingo"]
        env = {**os.environ, **replica.model.env, "PORT": str(replica.port)}
        with open(replica.log_path, "ab") as output:  # noqa: ASYNC230 (a local file, opened once)
            replica.process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        log.info(
            "replica starting",
            extra={"model": replica.model.group.name, "port": replica.port, "pid": replica.process.pid},
        )

    async def _wait_ready(self, replica: Replica) -> bool:
        """Poll the ready path until it answers 200; False if the process exits or is stopped first."""
        assert replica.process is not None and self._session is not None
        url = replica.url + replica.model.ready_path
        while replica.process.returncode is None and not replica.stopping:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with self._session.get(url) as response:
                    if response.status == 200:
                        return True
            await asyncio.sleep(READY_POLL_INTERVAL)
        return False

    def _forget(self, replica: Replica) -> None:
        group = replica.model.group.name
        if replica in self.replicas[group]:
            self.replicas[group].remove(replica)
        replica.ready = False
        self._publish(group)

    async def _terminate(self, replica: Replica, drain: bool) -> None:
        replica.stopping = True
        group = replica.model.group.name
        self._publish(group)
        if drain:
            await self._drain(replica)
        process = replica.process
        if process is not None and process.returncode is None:
            self._signal(process, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), replica.model.stop_grace)
            except TimeoutError:
                log.warning("replica ignored SIGTERM; killing it", extra={"model": group, "pid": process.pid})
                self._signal(process, signal.SIGKILL)
                await process.wait()
        if replica.task is not None and replica.task is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError):
                await replica.task
        self._forget(replica)
        log.info("replica stopped", extra={"model": group, "port": replica.port})

    async def _drain(self, replica: Replica) -> None:
        """Wait (up to the stop grace) for requests already sent to the replica to finish."""
        queue = self._registry.queues.get(replica.model.group.name) if self._registry else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + replica.model.stop_grace
        while queue is not None and queue.in_flight_on(replica.url) and loop.time() < deadline:
            await asyncio.sleep(0.05)

    @staticmethod
    def _signal(process: asyncio.subprocess.Process, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signum)
