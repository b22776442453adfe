"""The OpenAI Files and Batches API on the proxy port.

- `objects` — OpenAI's objects, input-file rules and output lines (pure);
- `schema`, `store` — the tables, their migrations, and `BatchStore` on SQLite or PostgreSQL;
- `multipart` — upload parsing (run off the event loop);
- `routes` — the HTTP face (`/v1/files…`, `/v1/batches…`);
- `runner` — claims batches under a lease and sends their lines through the shared queue.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import make_url

from lingo.batch.api import routes
from lingo.batch.api.objects import batch_object
from lingo.batch.api.routes import BatchApiRoutes
from lingo.batch.api.runner import BatchRunner, RunnerSettings
from lingo.batch.api.store import BatchStore
from lingo.config import ConfigError, Settings
from lingo.metrics import Metrics
from lingo.proxy.forwarder import Forwarder
from lingo.proxy.server import IncomingRequest, ResponseWriter
from lingo.registry import Registry


def database_url(settings: Settings) -> str:
    """`LINGO_DATABASE_URL`, else the SQLite file under `LINGO_DATA_DIR`."""
    return settings.database_url or f"sqlite:///{Path(settings.data_dir).absolute() / 'lingo.db'}"


class BatchApi:
    """The store, the HTTP routes and the runner of the Batches API, started and stopped together."""

    def __init__(
        self, settings: Settings, registry: Registry, forwarder: Forwarder, metrics: Metrics
    ) -> None:
        #: True when the database was named explicitly (opened at start-up, failing it if unreachable).
        self.explicit = bool(settings.database_url)
        #: Where files and batches live.
        self.store = BatchStore(database_url(settings))
        #: Runs batches in this process.
        self.runner = BatchRunner(
            self.store,
            registry,
            forwarder,
            metrics,
            RunnerSettings(
                concurrency=settings.batch_api_concurrency,
                max_jobs=settings.batch_api_max_jobs,
                lease=settings.batch_api_lease,
                poll_interval=settings.batch_api_poll_interval,
            ),
            settings.max_wait,
        )
        #: Answers the API's paths.
        self.routes = BatchApiRoutes(
            self.store,
            settings.batch_api_window,
            bool(settings.api_keys),
            self.runner.wake,
            self.runner.cancel_local,
        )

    @staticmethod
    def handles(path: str) -> bool:
        return routes.handles(path)

    async def __call__(self, request: IncomingRequest, out: ResponseWriter) -> None:
        await self.routes(request, out)

    async def start(self) -> None:
        """Open the database when it exists or was named (a default SQLite file is created on the
        first API call, so a lingo that never sees a batch writes nothing), then start the runner."""
        path = self.store.sqlite_path()
        if self.explicit or (path is not None and path.exists()):
            try:
                await self.store.open()
            except Exception as exc:
                shown = make_url(self.store.url).render_as_string(hide_password=True)
                raise ConfigError(f"cannot open LINGO_DATABASE_URL={shown!r}: {exc}") from None
        self.runner.start()

    async def running_jobs(self) -> list[dict[str, Any]]:
        """The batches this process runs now, as OpenAI Batch objects (for `/status`)."""
        jobs = []
        for batch_id in list(self.runner.jobs):
            row = await self.store.get_batch(None, batch_id)
            if row is not None:
                jobs.append(batch_object(row))
        return jobs

    def halt(self) -> None:
        """Stop claiming and dispatching; lines in flight go on (call before the queues close)."""
        self.runner.halt()

    async def stop(self, grace: float) -> None:
        """Wait (up to `grace`) for lines in flight, record their results, give the leases back."""
        await self.runner.stop(grace)

    async def close(self) -> None:
        """Close the database connections (after the proxy stopped answering API calls)."""
        await self.store.close()


__all__ = ["BatchApi", "BatchStore", "database_url"]
