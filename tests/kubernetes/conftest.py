"""Fixtures for the Kubernetes platform tests: a FakeKube API server, lingo in-process against it,
and a `Kubelet` that plays the cluster (runs a `lingo fake-model` per replica, publishes its slice).

Every API call any test makes through FakeKube is collected for the RBAC test (`recorded_calls`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lingo.app import Lingo
from lingo.platforms.kubernetes import KubernetesPlatform
from tests.conftest import FakeModelProcess, free_port, test_settings
from tests.fakekube import Call, FakeKube, deployment, endpoint_slice
from tests.kubernetes.lingo_replica import FAST_LEASE

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "default"
PREFIX = "lingo.substratus.ai/"

_SESSION_CALLS: list[Call] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the RBAC test last, so it also sees the calls every other Kubernetes test made."""
    last = [item for item in items if item.module is not None and item.module.__name__.endswith("test_rbac")]
    for item in last:
        items.remove(item)
    items.extend(last)


@pytest.fixture(scope="session")
def recorded_calls() -> list[Call]:
    """Every API call made to any FakeKube in this session (filled as each test ends)."""
    return _SESSION_CALLS


@pytest.fixture
async def fake(recorded_calls: list[Call]) -> AsyncIterator[FakeKube]:
    async with FakeKube(bookmark_interval=0.5) as server:
        try:
            yield server
        finally:
            recorded_calls.extend(server.calls)


@pytest.fixture
def kubeconfig(fake: FakeKube, tmp_path: Path) -> str:
    return str(fake.write_kubeconfig(tmp_path / "kubeconfig"))


def model_deployment(name: str, models: str, replicas: int = 0, **annotations: str) -> dict[str, Any]:
    """A Deployment annotated as a model; `annotations` keys use _ for - (`max_replicas="2"`)."""
    notes = {PREFIX + "models": models, **{PREFIX + k.replace("_", "-"): v for k, v in annotations.items()}}
    return deployment(name, replicas=replicas, annotations=notes)


def kube_settings(**overrides: Any) -> Any:
    base: dict[str, Any] = {
        "platform": "kubernetes",
        "namespace": NAMESPACE,
        "pod_name": "lingo-0",
        "peer_service": "lingo",
        "max_wait": 20.0,
    }
    return test_settings(**{**base, **overrides})


StartLingo = Callable[..., Awaitable[Lingo]]


@pytest.fixture
async def start_lingo(kubeconfig: str) -> AsyncIterator[StartLingo]:
    """`await start_lingo(**settings)` → a started in-process lingo on the Kubernetes platform."""
    started: list[Lingo] = []

    async def start(platform_options: dict[str, Any] | None = None, **overrides: Any) -> Lingo:
        settings = kube_settings(**overrides)
        options = {**FAST_LEASE, "max_backoff": 0.5, "sync_timeout": 10.0, **(platform_options or {})}
        lingo = Lingo(settings, platform=KubernetesPlatform(settings, kubeconfig=kubeconfig, **options))
        await lingo.start()
        started.append(lingo)
        return lingo

    yield start
    for lingo in reversed(started):
        await lingo.stop()


class Kubelet:
    """Plays the cluster for the tests: keeps one `lingo fake-model` per desired replica of each
    Deployment and publishes one ready EndpointSlice per replica (so a Service has several slices)."""

    def __init__(self, fake: FakeKube, *model_args: str) -> None:
        self.fake = fake
        self.model_args = model_args
        #: Running replicas per Deployment.
        self.replicas: dict[str, list[FakeModelProcess]] = {}
        #: Every spec.replicas value seen per Deployment, consecutive duplicates dropped.
        self.history: dict[str, list[int]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsubscribe = fake.on_change(self._on_change)

    def _on_change(self, kind: str, group: str, resource: str, obj: dict[str, Any]) -> None:
        if resource != "deployments":
            return
        name = obj["metadata"]["name"]
        replicas = 0 if kind == "DELETED" else obj["spec"].get("replicas", 1)
        seen = self.history.setdefault(name, [])
        if not seen or seen[-1] != replicas:
            seen.append(replicas)
        task = asyncio.get_running_loop().create_task(self._reconcile(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reconcile(self, name: str) -> None:
        async with self._locks.setdefault(name, asyncio.Lock()):
            obj = self.fake.get_object("apps", "deployments", NAMESPACE, name)
            wanted = 0 if obj is None else obj["spec"].get("replicas", 1)
            annotations = (obj or {}).get("metadata", {}).get("annotations") or {}
            service = annotations.get(PREFIX + "service") or name
            running = self.replicas.setdefault(name, [])
            while len(running) < wanted:
                process = FakeModelProcess(*self.model_args)
                running.append(process)  # before waiting: close() kills it even if cancelled meanwhile
                await asyncio.to_thread(process.wait_ready)
                self.fake.put(
                    endpoint_slice(f"{service}-{process.port}", service, [("127.0.0.1", True)], process.port)
                )
            while len(running) > wanted:
                process = running.pop()
                self.fake.delete_object(
                    "discovery.k8s.io", "endpointslices", NAMESPACE, f"{service}-{process.port}"
                )
                await asyncio.to_thread(process.kill)

    async def close(self) -> None:
        self._unsubscribe()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for processes in self.replicas.values():
            for process in processes:
                process.kill()


@pytest.fixture
async def kubelet(fake: FakeKube) -> AsyncIterator[Callable[..., Kubelet]]:
    """`kubelet(*fake_model_flags)` → a Kubelet over the test's FakeKube, stopped after the test."""
    made: list[Kubelet] = []

    def make(*model_args: str) -> Kubelet:
        made.append(Kubelet(fake, *model_args))
        return made[-1]

    yield make
    for one in made:
        await one.close()


@pytest.fixture
def model_servers() -> Iterator[Callable[..., FakeModelProcess]]:
    """`model_servers(*flags)` → a ready fake-model process (not tied to any Deployment)."""
    processes: list[FakeModelProcess] = []

    def start(*args: str) -> FakeModelProcess:
        processes.append(FakeModelProcess(*args).wait_ready())
        return processes[-1]

    yield start
    for process in processes:
        process.kill()


class LingoProcess:
    """A real lingo process named `name` with its own ports: `lingo serve` itself (configured by
    KUBECONFIG), or with `fast_lease` the test launcher that shortens the lease timings."""

    def __init__(self, name: str, kubeconfig: str, log_dir: Path, fast_lease: bool = True) -> None:
        self.name = name
        self.ports = {listener: free_port() for listener in ("proxy", "health", "metrics", "stats")}
        self.log_path = log_dir / f"{name}.log"
        env = {
            **os.environ,
            "NAMESPACE": NAMESPACE,
            "POD_NAME": name,
            "LINGO_PLATFORM": "kubernetes",
            "LINGO_PEER_SERVICE": "lingo",
            "LINGO_PROXY_ADDRESS": f"127.0.0.1:{self.ports['proxy']}",
            "HEALTH_PROBE_BIND_ADDRESS": f"127.0.0.1:{self.ports['health']}",
            "METRICS_BIND_ADDRESS": f"127.0.0.1:{self.ports['metrics']}",
            "LINGO_STATS_ADDRESS": f"127.0.0.1:{self.ports['stats']}",
            "AUTOSCALING_INTERVAL": "0.2",
            "AUTOSCALING_TIME_WINDOW": "1",
            "SCALE_DOWN_DELAY": "1",
            "LINGO_MAX_WAIT": "30",
            "LINGO_SHUTDOWN_GRACE": "1",
            "LINGO_SHUTDOWN_DELAY": "0",  # no load balancer to leave: stop at once
            "KUBECONFIG": kubeconfig,
        }
        env.pop("KUBERNETES_SERVICE_HOST", None)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.kubernetes.lingo_replica", kubeconfig]
                if fast_lease
                else [sys.executable, "-m", "lingo", "serve"],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def url(self, listener: str = "proxy") -> str:
        return f"http://127.0.0.1:{self.ports[listener]}"

    def peer_slice(self) -> dict[str, Any]:
        """The slice the endpoints controller would publish for this pod in the peer Service."""
        obj = endpoint_slice(
            f"lingo-{self.name}", "lingo", [("127.0.0.1", True)], self.ports["stats"], "stats"
        )
        obj["endpoints"][0]["targetRef"] = {"kind": "Pod", "name": self.name, "namespace": NAMESPACE}
        return obj

    async def wait_ready(self, timeout: float = 20.0) -> None:
        async def ready() -> bool:
            try:
                async with aiohttp.ClientSession() as s, s.get(self.url("health") + "/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        deadline = time.monotonic() + timeout
        while not await ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready:\n{self.log_path.read_text()[-3000:]}")
            await asyncio.sleep(0.1)

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signum)
            self.process.wait(10)


@pytest.fixture
def lingo_processes(kubeconfig: str, tmp_path: Path) -> Iterator[Callable[..., LingoProcess]]:
    """`lingo_processes(name)` → a started LingoProcess, stopped (SIGTERM) after the test."""
    started: list[LingoProcess] = []

    def start(name: str, fast_lease: bool = True) -> LingoProcess:
        started.append(LingoProcess(name, kubeconfig, tmp_path, fast_lease))
        return started[-1]

    yield start
    for process in started:
        process.kill(signal.SIGTERM)


def lease_holder(fake: FakeKube, name: str = "lingo-leader") -> str:
    """Who holds the leader Lease now ("" when nobody does)."""
    lease = fake.get_object("coordination.k8s.io", "leases", NAMESPACE, name) or {}
    return lease.get("spec", {}).get("holderIdentity") or ""


async def post_completion(
    lingo: Lingo, model: str, session: aiohttp.ClientSession, timeout: float = 20.0
) -> tuple[int, dict[str, str]]:
    """POST /v1/completions through lingo; (status, response headers)."""
    async with session.post(
        lingo.url() + "/v1/completions",
        json={"model": model, "prompt": "hi", "max_tokens": 2},
        timeout=aiohttp.ClientTimeout(total=timeout),
    ) as response:
        await response.read()
        return response.status, dict(response.headers)


async def metric_value(lingo: Lingo, name: str, model: str) -> float:
    """A gauge for one model in lingo's /metrics, summed over its other labels (0 when absent)."""
    async with aiohttp.ClientSession() as session, session.get(lingo.url("metrics") + "/metrics") as response:
        text = await response.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and sample.labels.get("model") == model
    )


@contextlib.asynccontextmanager
async def background(*coroutines: Awaitable[Any]) -> AsyncIterator[list[asyncio.Task[Any]]]:
    """Run coroutines as tasks for the duration of a block; cancel whatever is left after it."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
