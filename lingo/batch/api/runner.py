"""Runs batches: claims one under a lease, validates its input, sends its lines through the shared
queue, records each result as it completes, and writes the output and error files at the end.

Every line takes `Forwarder.exchange` in the batch class — the path HTTP requests take — so it counts
as demand (a model at zero replicas scales up) and waits behind interactive requests. A batch runs
in one process at a time: the lease in its row, renewed while it runs; a process that dies stops
renewing, and after the lease expires another one claims the batch and runs the lines still pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from lingo.backoff import Backoff, backoff_delay
from lingo.batch.api.objects import check_input, new_id, output_line
from lingo.batch.api.store import BatchStore, LineResult
from lingo.batch.envelope import response_body
from lingo.batch.handler import REQUEST_HEADERS, TRANSIENT_STATUSES, RetryPolicy
from lingo.errors import BackendUnreachable, LingoError, ModelNotFound
from lingo.metrics import Metrics
from lingo.prompt_key import routing_key
from lingo.proxy.forwarder import Forwarder
from lingo.queue import Priority
from lingo.registry import Registry

log = logging.getLogger(__name__)

#: Lines read from the database per page while dispatching.
PAGE = 500
#: Finished lines held in memory before line tasks wait for the writer (backpressure).
MAX_UNWRITTEN = 10_000


@dataclass(frozen=True)
class RunnerSettings:
    """How batches are run."""

    #: Lines of one batch in flight at once.
    concurrency: int = 64
    #: Batches one process runs at once.
    max_jobs: int = 4
    #: Seconds a claim on a batch lasts unless renewed (renewed every third of it).
    lease: float = 30.0
    #: Seconds between looks for batches to claim.
    poll_interval: float = 1.0
    #: Retries of transient failures of one line.
    retry: RetryPolicy = field(default_factory=RetryPolicy)


class ResultWriter:
    """Records finished lines with group commit: whatever finished while the last write ran is
    written in the next transaction, so results reach the database as they complete without one
    transaction per line."""

    def __init__(self, store: BatchStore, on_error: Callable[[], float]) -> None:
        #: Where results go.
        self.store = store
        #: Pause before retrying a failed write.
        self.on_error = on_error
        self._buffer: list[LineResult] = []
        self._added = 0
        self._written = 0
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="batch-result-writer")

    async def add(self, result: LineResult) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: len(self._buffer) < MAX_UNWRITTEN)
            self._buffer.append(result)
            self._added += 1
            self._changed.notify_all()

    async def drain(self) -> None:
        """Wait until everything added so far is in the database."""
        target = self._added
        async with self._changed:
            await self._changed.wait_for(lambda: self._written >= target)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: bool(self._buffer))
                batch = self._buffer
                self._buffer = []
            while True:
                try:
                    await self.store.record_results(batch)
                    break
                except Exception as exc:
                    delay = self.on_error()
                    log.warning("recording batch results failed", extra={"error": repr(exc), "delay": delay})
                    await asyncio.sleep(delay)
            async with self._changed:
                self._written += len(batch)
                self._changed.notify_all()


class _Job:
    """One claimed batch being run by this process."""

    def __init__(self, row: dict[str, Any]) -> None:
        #: The batch row as claimed.
        self.row = row
        #: The batch id.
        self.id: str = row["id"]
        #: Set when the batch should stop dispatching: cancelled, lease lost or shutdown.
        self.stop = asyncio.Event()
        #: Why dispatching stopped: `cancel`, `lost`, `shutdown` (None while running).
        self.reason: str | None = None

    def halt(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.stop.set()


class BatchRunner:
    """Claims and runs batches of the Batches API in this process."""

    def __init__(
        self,
        store: BatchStore,
        registry: Registry,
        forwarder: Forwarder,
        metrics: Metrics,
        settings: RunnerSettings,
        max_wait: float,
    ) -> None:
        #: Where batches live.
        self.store = store
        #: Known models and their queues.
        self.registry = registry
        #: The shared path to backends.
        self.forwarder = forwarder
        #: Where lines and jobs are counted.
        self.metrics = metrics
        #: Concurrency, lease and retry settings.
        self.settings = settings
        #: Seconds one line may wait for an endpoint slot per attempt.
        self.max_wait = max_wait
        #: This process's identity in leases.
        self.runner_id = f"{socket.gethostname()[:32]}-{os.getpid()}-{secrets.token_hex(4)}"
        #: Batches running in this process, by id.
        self.jobs: dict[str, _Job] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._job_tasks: set[asyncio.Task[None]] = set()
        self._writer = ResultWriter(store, Backoff(0.2, 5.0).next)
        self._stopping = False

    def start(self) -> None:
        self._writer.start()
        self._task = asyncio.create_task(self._loop(), name="batch-runner")

    def wake(self) -> None:
        """Look for work now (a batch was just created)."""
        self._wake.set()

    def cancel_local(self, batch_id: str) -> None:
        """A cancel arrived on this process: stop dispatching the batch now if it runs here."""
        job = self.jobs.get(batch_id)
        if job is not None:
            job.halt("cancel")

    def halt(self) -> None:
        """Stop claiming and dispatching at once; lines in flight go on."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
        for job in self.jobs.values():
            job.halt("shutdown")

    async def stop(self, grace: float) -> None:
        """Halt, let lines in flight finish (up to `grace`), record them, and give the leases back
        so another process can continue at once."""
        self.halt()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._job_tasks:
            _, pending = await asyncio.wait(self._job_tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        await self._writer.stop()

    # -- claiming ---------------------------------------------------------------------------------

    async def _loop(self) -> None:
        backoff = Backoff(0.5, 30.0)
        while True:
            self._wake.clear()  # before looking: a wake during the look is not lost
            try:
                if self.store.ready:
                    await self._refresh_gauge()
                    while len(self.jobs) < self.settings.max_jobs:
                        row = await self.store.claim(self.runner_id, self.settings.lease, list(self.jobs))
                        if row is None:
                            break
                        self._launch(row)
                backoff.reset()
                delay = self.settings.poll_interval
            except Exception as exc:
                delay = backoff.next()
                log.warning("claiming batches failed", extra={"error": repr(exc), "delay": round(delay, 2)})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _launch(self, row: dict[str, Any]) -> None:
        job = _Job(row)
        self.jobs[job.id] = job
        log.info("batch claimed", extra={"batch": job.id, "status": row["status"], "runner": self.runner_id})
        task = asyncio.create_task(self._run(job), name=f"batch-{job.id}")
        self._job_tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._job_tasks.discard(finished)
            self.jobs.pop(job.id, None)
            if not self._stopping:
                self._wake.set()  # a slot is free: look for the next batch

        task.add_done_callback(done)

    async def _refresh_gauge(self) -> None:
        counts = await self.store.status_counts()
        for status in (
            "validating",
            "in_progress",
            "finalizing",
            "completed",
            "failed",
            "expired",
            "cancelling",
            "cancelled",
        ):
            self.metrics.batch_jobs.labels(status).set(counts.get(status, 0))

    # -- one batch --------------------------------------------------------------------------------

    async def _run(self, job: _Job) -> None:
        renewal = asyncio.create_task(self._renew(job), name=f"lease-{job.id}")
        try:
            await self._run_claimed(job)
        except Exception:
            log.exception("batch run failed; another attempt follows the lease", extra={"batch": job.id})
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
            # A no-op when the batch ended (its lease was cleared) or another runner holds it.
            with contextlib.suppress(Exception):
                await self.store.release(job.id, self.runner_id)

    async def _run_claimed(self, job: _Job) -> None:
        status = job.row["status"]
        if status == "validating":
            if not await self._validate(job):
                return
            status = "in_progress"
        elif status == "cancelling" and job.row["in_progress_at"] is None:
            await self.store.finalize(job.id, self.runner_id, "cancelled")  # cancelled before it started
            return
        if status == "cancelling":
            job.halt("cancel")
        if status in ("in_progress", "cancelling"):
            await self._dispatch(job)
            await self._writer.drain()
        if job.reason in ("lost", "shutdown"):
            return
        if job.reason == "cancel":
            final = "cancelled"
        elif job.reason == "expired":
            final = "expired"
        else:
            final = "completed"
            await self.store.mark_finalizing(job.id, self.runner_id)
        if await self.store.finalize(job.id, self.runner_id, final):
            log.info("batch finished", extra={"batch": job.id, "status": final})

    async def _validate(self, job: _Job) -> bool:
        """Check the input file; store its lines (True) or fail the batch with line numbers (False)."""
        content = await self.store.file_content(job.row["input_file_id"])
        if content is None:
            errors = [
                {
                    "code": "file_not_found",
                    "message": "the input file was deleted",
                    "param": None,
                    "line": None,
                }
            ]
            await self.store.fail_validation(job.id, self.runner_id, errors)
            return False
        check = await asyncio.to_thread(check_input, content, job.row["endpoint"])
        if check.error_count:
            await self.store.fail_validation(job.id, self.runner_id, check.errors)
            log.info("batch input refused", extra={"batch": job.id, "errors": check.error_count})
            return False
        return await self.store.start_lines(job.id, self.runner_id, check.lines)

    async def _renew(self, job: _Job) -> None:
        interval = max(0.05, self.settings.lease / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                status = await self.store.renew(job.id, self.runner_id, self.settings.lease)
            except Exception as exc:
                log.warning("renewing a batch lease failed", extra={"batch": job.id, "error": repr(exc)})
                continue
            if status is None:
                log.warning("batch lease lost; another process continues", extra={"batch": job.id})
                job.halt("lost")
                return
            if status == "cancelling":
                job.halt("cancel")

    async def _dispatch(self, job: _Job) -> None:
        """Send every pending line, `concurrency` at a time, until done or told to stop."""
        limit = asyncio.Semaphore(self.settings.concurrency)
        in_flight: set[asyncio.Task[None]] = set()
        try:
            await self._dispatch_pages(job, limit, in_flight)
            if in_flight:
                await asyncio.wait(in_flight)
        except asyncio.CancelledError:
            for task in in_flight:  # shutdown grace is over: their lines stay pending for the next run
                task.cancel()
            raise

    async def _dispatch_pages(
        self, job: _Job, limit: asyncio.Semaphore, in_flight: set[asyncio.Task[None]]
    ) -> None:
        expires_at = job.row["expires_at"]
        after = 0
        while not job.stop.is_set():
            page = await self.store.pending_lines(job.id, after, PAGE)
            if not page:
                break
            for line in page:
                await limit.acquire()  # waits at most for one line in flight to finish
                if job.stop.is_set():
                    limit.release()
                    break
                if time.time() >= expires_at:
                    job.halt("expired")
                    limit.release()
                    break
                task = asyncio.create_task(self._line(job, line.line, line.custom_id, line.body))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                task.add_done_callback(lambda _: limit.release())
                after = line.line

    async def _line(self, job: _Job, number: int, custom_id: str, body: bytes) -> None:
        status, request_id, document = await self._send(job, body)
        if status in TRANSIENT_STATUSES and job.reason in ("shutdown", "lost"):
            return  # not an answer: the next runner sends it again
        ok = status < 400
        result = output_line(custom_id, status, request_id, document)
        self.metrics.batch_job_lines.labels("completed" if ok else "failed").inc()
        await self._writer.add(LineResult(job.id, number, ok, result))

    async def _send(self, job: _Job, body: bytes) -> tuple[int, str, object]:
        """(status, request id, response body) of one line, transient failures retried."""
        request = orjson.loads(body)
        model = request["model"]
        retry = self.settings.retry
        loop = asyncio.get_running_loop()
        for attempt in range(1, retry.max_attempts + 1):
            started = loop.time()
            queue = self.registry.lookup(model)
            if queue is None:
                error = ModelNotFound(f"The model `{model}` does not exist or is not served by this lingo.")
                return error.status, new_id("req_"), error.body()
            request_id = new_id("req_")
            key = (
                routing_key(job.row["endpoint"], request, queue.group.name)
                if queue.chooser.wants_key
                else None
            )
            try:
                async with self.forwarder.exchange(
                    queue,
                    "POST",
                    job.row["endpoint"],
                    {**REQUEST_HEADERS, "X-Request-Id": request_id},
                    body,
                    Priority.BATCH,
                    timeout=self.max_wait,
                    key=key,
                ) as exchange:
                    self.metrics.observe_wait(queue.group.name, exchange.waited)
                    data = await exchange.response.read()
                    status = exchange.response.status
                    request_id = _header(exchange.response.raw_headers, "x-request-id") or request_id
                    document: object = response_body(data)
            except LingoError as refused:
                status, document = refused.status, refused.body()
            except OSError as exc:
                # The backend failed while sending its answer: worth another attempt, like a 502.
                broken = BackendUnreachable(f"model group {queue.group.name!r} failed mid-response: {exc!r}")
                status, document = broken.status, broken.body()
            self.metrics.observe_request(
                queue.group.name, "batch", status, loop.time() - started, Priority.BATCH.label
            )
            if status in TRANSIENT_STATUSES and attempt < retry.max_attempts and not job.stop.is_set():
                self.metrics.batch_job_lines.labels("retried").inc()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff_delay(attempt, retry.base, retry.cap)):
                        await job.stop.wait()
                continue
            return status, request_id, document
        raise AssertionError("unreachable: the last attempt always returns")


def _header(raw_headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in raw_headers:
        if key.lower() == name:
            return value
    return None
