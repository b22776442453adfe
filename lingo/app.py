"""One lingo process: the proxy, the shared queues, the autoscaler, the platform, batch streams,
and the health, metrics and stats listeners, started and stopped in the right order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from lingo.access_log import AccessLog
from lingo.autoscaler import Autoscaler
from lingo.config import ConfigError, Settings
from lingo.errors import ShuttingDown
from lingo.metrics import Metrics
from lingo.platforms.base import Platform
from lingo.proxy import Forwarder, ProxyHandler
from lingo.proxy.server import ProxyServer
from lingo.proxy.upstream import UpstreamPool
from lingo.queue import ClassPolicy
from lingo.registry import Registry
from lingo.status import StatusFacts, status_page_html

log = logging.getLogger(__name__)


def socket_error(exc: OSError) -> str:
    """The system's short reason (`Address already in use`), not asyncio's long wrapper text."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


def build_platform(settings: Settings) -> Platform:
    """The platform named by the settings; configuration problems raise ConfigError."""
    name = settings.resolved_platform()
    if name == "kubernetes":
        from lingo.platforms.kubernetes import KubernetesPlatform

        return KubernetesPlatform(settings)
    from lingo.platforms.local import LocalPlatform
    from lingo.platforms.models_file import load_models_file

    if not settings.models_file:
        raise ConfigError("LINGO_MODELS_FILE (--models-file) is required on the local platform")
    models = load_models_file(settings.models_file, settings.concurrency, settings.scale_down_delay)
    return LocalPlatform(models, settings.log_dir)


class Lingo:
    """Everything `lingo serve` runs, wired together around one `Registry` of model queues."""

    def __init__(self, settings: Settings, platform: Platform | None = None) -> None:
        #: Parsed settings.
        self.settings = settings
        #: Where models run.
        self.platform = platform or build_platform(settings)
        #: Known models and their queues: the single source of truth for demand.
        self.registry = Registry(
            settings.max_queue,
            on_demand=self._on_demand,
            policy=ClassPolicy(settings.flex_max_wait, settings.batch_max_share, settings.priority_aging),
        )
        hooks: Any = getattr(self.platform, "scaling_hooks", None)
        #: Sets replica counts from demand.
        self.autoscaler = Autoscaler(
            self.registry,
            self.platform,
            interval=settings.autoscaling_interval,
            window=settings.autoscaling_time_window,
            **({"is_leader": hooks.is_leader, "demand": hooks.demand, "state": hooks} if hooks else {}),
        )
        #: Prometheus metrics of this process.
        self.metrics = Metrics(self.registry, lambda: self.autoscaler.desired)
        self.autoscaler.listeners.append(self.metrics.observe_scale)
        #: Bound (host, port) of each listener once started: proxy, health, metrics, stats.
        self.addresses: dict[str, tuple[str, int]] = {}
        #: Batch streams (set up by `lingo.batch` when messengers are configured).
        self.batch: Any = None
        #: The facts behind `/status`, `/status.json` and `lingo status`.
        self.status = StatusFacts(
            self.registry,
            self.autoscaler,
            self.metrics,
            platform=settings.resolved_platform(),
            ready=lambda: self._ready and self.platform.synced(),
            streams=lambda: self.batch.streams if self.batch is not None else (),
        )
        #: The OpenAI Files and Batches API (`lingo.batch.api.BatchApi`).
        self.batch_api: Any = None
        self.forwarder: Forwarder | None = None
        self.proxy: ProxyServer | None = None
        self._runners: dict[str, web.AppRunner] = {}
        self._ready = False
        #: True from SIGTERM on: /readyz fails while lingo still serves (endpoint removal window).
        self.shutting_down = False
        self._stopped = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        self.forwarder = Forwarder(
            UpstreamPool(s.upstream_timeout, s.upstream_idle_timeout), s.backend_retries, s.max_wait
        )
        # An endpoint that left (pod gone, replica stopped) must not leave stale pooled connections.
        self.registry.on_endpoint_removed = self.forwarder.pool.forget_endpoint
        handler = ProxyHandler(
            self.registry, self.forwarder, self.metrics, s.max_body, s.api_keys, AccessLog(s.access_log)
        )
        if s.messengers:  # parsed before anything listens, so a bad URL fails start-up at once
            from lingo.batch import BatchStreams

            self.batch = BatchStreams.from_settings(s, self.registry, self.forwarder, self.metrics)
        from lingo.batch.api import BatchApi

        self.batch_api = BatchApi(s, self.registry, self.forwarder, self.metrics)
        await self.batch_api.start()
        self.status.jobs = self.batch_api.running_jobs
        handler.own_routes = (self.batch_api.handles, self.batch_api)
        await self._listen("health", self._health_app(), s.health_address)
        await self._listen("metrics", self._metrics_app(), s.metrics_address)
        await self._listen("stats", self._stats_app(), s.stats_address)
        await self.platform.start(self.registry)
        await self.autoscaler.start()
        self.proxy = ProxyServer(
            handler,
            s.max_body,
            max_buffered=s.max_buffered,
            header_timeout=s.header_timeout,
            body_timeout=s.body_timeout,
        )
        try:
            self.addresses["proxy"] = await self.proxy.start(*s.proxy_address)
        except OSError as exc:
            host, port = s.proxy_address
            raise ConfigError(f"cannot listen for proxy on {host}:{port}: {socket_error(exc)}") from None
        if self.batch is not None:
            await self.batch.start()
        self._ready = True
        log.info("lingo started", extra={name: f"{h}:{p}" for name, (h, p) in self.addresses.items()})

    async def leave(self, interrupt: asyncio.Event | None = None) -> None:
        """Fail /readyz but keep serving for `shutdown_delay` (or until `interrupt` is set): load
        balancers (a Service's endpoints) notice only some time after SIGTERM, and keep sending
        requests until then. Answers carry `Connection: close` meanwhile, so clients reconnect to
        the replicas that stay."""
        self.shutting_down = True
        self._ready = False
        if self.proxy is not None:
            self.proxy.draining = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for((interrupt or asyncio.Event()).wait(), self.settings.shutdown_delay)

    async def stop(self) -> None:
        """Stop accepting; let in-flight and queued requests finish within `shutdown_grace`
        (what still waits then gets 503); then stop the autoscaler, the platform and replicas."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._ready = False
        grace = self.settings.shutdown_grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if self.batch_api is not None:
            self.batch_api.halt()  # stop dispatching: lines still queued stay pending, not failed
        if self.proxy is not None:
            self.proxy.stop_accepting()
        if self.batch is not None:
            await self.batch.stop(grace)
        queues = self.registry.queues
        while any(q.active for q in queues.values()) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.batch_api is not None:
            await self.batch_api.stop(max(0.0, deadline - loop.time()))
        self.registry.close_all(ShuttingDown("lingo is shutting down; retry on another replica"))
        if self.proxy is not None:
            # A moment past the grace, so the 503s just decided are written before connections close.
            await self.proxy.close(max(1.0, deadline - loop.time()))
        await self.autoscaler.stop()
        await self.platform.stop()
        if self.forwarder is not None:
            await self.forwarder.pool.close()
        if self.batch_api is not None:
            await self.batch_api.close()
        for runner in self._runners.values():
            await runner.cleanup()
        log.info("lingo stopped")

    async def run(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then stop gracefully."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await self.start()
            await stop.wait()
            log.info(
                "signal received; shutting down",
                extra={"delay": self.settings.shutdown_delay, "grace": self.settings.shutdown_grace},
            )
            stop.clear()
            await self.leave(interrupt=stop)  # a second signal skips the rest of the delay
        finally:
            await self.stop()

    def url(self, listener: str = "proxy") -> str:
        host, port = self.addresses[listener]
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"

    # -- internals ----------------------------------------------------------------------------------

    def _on_demand(self, group: str) -> None:
        self.autoscaler.wake(group)

    async def _listen(self, name: str, app: web.Application, address: tuple[str, int]) -> None:
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=self.settings.shutdown_grace
        )
        await runner.setup()
        site = web.TCPSite(runner, address[0], address[1], backlog=4096, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"cannot listen for {name} on {address[0]}:{address[1]}: {socket_error(exc)}"
            ) from None
        server = site._server
        sockets = server.sockets if isinstance(server, asyncio.Server) else []
        bound = sockets[0].getsockname() if sockets else address
        self.addresses[name] = (address[0], int(bound[1]))
        self._runners[name] = runner

    def _health_app(self) -> web.Application:
        async def healthz(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        async def readyz(request: web.Request) -> web.Response:
            if self._ready and self.platform.synced():
                return web.Response(text="ready")
            return web.Response(status=503, text="shutting down" if self.shutting_down else "not ready")

        async def status_json(request: web.Request) -> web.Response:
            return web.json_response(await self.status.gather(), headers={"Cache-Control": "no-store"})

        async def status_page(request: web.Request) -> web.Response:
            return web.Response(body=status_page_html(), content_type="text/html", charset="utf-8")

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/status.json", status_json)
        app.router.add_get("/status", status_page)
        return app

    def _metrics_app(self) -> web.Application:
        async def metrics(request: web.Request) -> web.Response:
            return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        return app

    def _stats_app(self) -> web.Application:
        async def stats(request: web.Request) -> web.Response:
            active = {name: queue.active for name, queue in self.registry.queues.items()}
            return web.json_response({"activeRequests": active})

        app = web.Application()
        app.router.add_get("/stats", stats)
        return app


async def serve(settings: Settings) -> None:
    lingo = Lingo(settings)
    with contextlib.suppress(asyncio.CancelledError):
        await lingo.run()
