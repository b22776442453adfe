"""Where the Batches API keeps its state: files, batches, lines and leases, in SQLite or PostgreSQL.

One class, `BatchStore`, on SQLAlchemy's async engine (aiosqlite / asyncpg); the two databases differ
only in how a batch is claimed (`FOR UPDATE SKIP LOCKED` on PostgreSQL) and how the schema migration is
serialised between processes (an advisory lock on PostgreSQL; SQLite's file lock otherwise).
File contents are stored in the database, so every lingo replica sharing it can serve them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import and_, bindparam, event, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from lingo.batch.api import schema
from lingo.batch.api.objects import ACTIVE_STATUSES, FINAL_STATUSES, InputLine, new_id, output_line
from lingo.config import ConfigError

Row = dict[str, Any]

#: Lines inserted per statement when a batch starts.
INSERT_CHUNK = 1000
#: Columns of a file row without its content (listings never load contents).
_FILE_COLUMNS = [column for column in schema.files.c if column.name != "content"]


def engine_url(url: str) -> str:
    """SQLAlchemy's async URL for `sqlite:///PATH` or `postgresql://…`."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    raise ConfigError(f"invalid LINGO_DATABASE_URL={url!r}: use sqlite:///PATH or postgresql://…")


def owner_of(api_key: str | None) -> str:
    """What a row's `owner` holds for a caller: a hash of its API key (never the key), '' without keys."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:48] if api_key else ""


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class LineResult:
    """A finished line, ready to be recorded."""

    #: Its batch.
    batch_id: str
    #: Its line number.
    line: int
    #: True for the output file, False for the error file.
    ok: bool
    #: The output line (`{id, custom_id, response, error}`).
    result: bytes


class BatchStore:
    """Files, batches and their lines in one SQL database."""

    def __init__(self, url: str) -> None:
        #: The database URL as configured (`sqlite:///…` or `postgresql://…`).
        self.url = url
        #: True on PostgreSQL (row locks, advisory locks).
        self.postgres = url.startswith(("postgresql://", "postgres://"))
        #: Set once the schema is migrated; nothing else runs before.
        self.ready = False
        self.engine: AsyncEngine = self._engine(url)

    # -- lifecycle --------------------------------------------------------------------------------

    @staticmethod
    def _engine(url: str) -> AsyncEngine:
        if url.startswith("sqlite:///"):
            engine = create_async_engine(engine_url(url), connect_args={"timeout": 30})

            @event.listens_for(engine.sync_engine, "connect")
            def _pragmas(dbapi_connection: Any, _record: Any) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.close()

            return engine
        return create_async_engine(engine_url(url), pool_size=10, max_overflow=10, pool_pre_ping=True)

    def sqlite_path(self) -> Path | None:
        """The SQLite file, None on PostgreSQL."""
        return None if self.postgres else Path(self.url[len("sqlite:///") :])

    async def open(self) -> None:
        """Create the database file's folder (SQLite) and apply missing migrations."""
        path = self.sqlite_path()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        async with self.engine.begin() as connection:
            if self.postgres:
                # Two replicas starting together must not both create the tables.
                await connection.execute(text("SELECT pg_advisory_xact_lock(7366190)"))
            await connection.run_sync(schema.migrate)
        self.ready = True

    async def close(self) -> None:
        await self.engine.dispose()

    # -- files ------------------------------------------------------------------------------------

    async def add_file(self, owner: str, filename: str, purpose: str, content: bytes) -> Row:
        async with self.engine.begin() as connection:
            return await self._insert_file(connection, owner, filename, purpose, content)

    async def _insert_file(
        self, connection: AsyncConnection, owner: str, filename: str, purpose: str, content: bytes
    ) -> Row:
        created_us = _now_us()
        row = {
            "id": new_id("file-"),
            "owner": owner,
            "filename": filename,
            "purpose": purpose,
            "bytes": len(content),
            "created_at": created_us // 1_000_000,
            "created_us": created_us,
        }
        await connection.execute(schema.files.insert().values(**row, content=content))
        return row

    async def get_file(self, owner: str, file_id: str) -> Row | None:
        query = select(*_FILE_COLUMNS).where(schema.files.c.id == file_id, schema.files.c.owner == owner)
        async with self.engine.connect() as connection:
            found = (await connection.execute(query)).mappings().first()
        return dict(found) if found else None

    async def file_content(self, file_id: str, owner: str | None = None) -> bytes | None:
        """A file's bytes; `owner=None` reads any owner's (the runner reading a batch's input)."""
        query = select(schema.files.c.content).where(schema.files.c.id == file_id)
        if owner is not None:
            query = query.where(schema.files.c.owner == owner)
        async with self.engine.connect() as connection:
            content = (await connection.execute(query)).scalar()
        return bytes(content) if content is not None else None

    async def list_files(
        self, owner: str, purpose: str | None, after: str | None, limit: int, ascending: bool
    ) -> tuple[list[Row], bool] | None:
        """A page of files, newest first unless `ascending`; None when the `after` cursor is unknown."""
        table = schema.files
        where = [table.c.owner == owner]
        if purpose:
            where.append(table.c.purpose == purpose)
        return await self._page(table, _FILE_COLUMNS, where, after, limit, ascending)

    async def delete_file(self, owner: str, file_id: str) -> bool:
        table = schema.files
        async with self.engine.begin() as connection:
            result = await connection.execute(
                table.delete().where(table.c.id == file_id, table.c.owner == owner)
            )
        return bool(result.rowcount)

    # -- batches ----------------------------------------------------------------------------------

    async def add_batch(
        self,
        owner: str,
        endpoint: str,
        input_file_id: str,
        completion_window: str,
        window_seconds: float,
        metadata: Mapping[str, str] | None,
    ) -> Row:
        created_us = _now_us()
        created_at = created_us // 1_000_000
        batch_id = new_id("batch_")
        values = {
            "id": batch_id,
            "owner": owner,
            "endpoint": endpoint,
            "input_file_id": input_file_id,
            "completion_window": completion_window,
            "status": "validating",
            "metadata": orjson.dumps(metadata).decode() if metadata is not None else None,
            "total": 0,
            "completed": 0,
            "failed": 0,
            "created_at": created_at,
            "created_us": created_us,
            "expires_at": int(created_us / 1_000_000 + window_seconds),
        }
        async with self.engine.begin() as connection:
            await connection.execute(schema.batches.insert().values(**values))
            return await self._batch(connection, batch_id)

    async def get_batch(self, owner: str | None, batch_id: str) -> Row | None:
        async with self.engine.connect() as connection:
            row = await self._batch(connection, batch_id)
        if row is None or (owner is not None and row["owner"] != owner):
            return None
        return row

    async def _batch(self, connection: AsyncConnection, batch_id: str) -> Row:
        found = (
            (await connection.execute(select(schema.batches).where(schema.batches.c.id == batch_id)))
            .mappings()
            .first()
        )
        return dict(found) if found else None  # type: ignore[return-value]

    async def list_batches(self, owner: str, after: str | None, limit: int) -> tuple[list[Row], bool] | None:
        table = schema.batches
        return await self._page(table, list(table.c), [table.c.owner == owner], after, limit, False)

    async def request_cancel(self, owner: str, batch_id: str) -> Row | None:
        """Move a running batch to `cancelling` (its runner finishes the cancel); the batch row."""
        table = schema.batches
        async with self.engine.begin() as connection:
            await connection.execute(
                update(table)
                .where(
                    table.c.id == batch_id,
                    table.c.owner == owner,
                    table.c.status.in_(("validating", "in_progress")),
                )
                .values(status="cancelling", cancelling_at=int(time.time()))
            )
            row = await self._batch(connection, batch_id)
        return row if row is not None and row["owner"] == owner else None

    async def status_counts(self) -> dict[str, int]:
        table = schema.batches
        query = select(table.c.status, func.count()).group_by(table.c.status)
        async with self.engine.connect() as connection:
            return {status: count for status, count in (await connection.execute(query)).all()}

    async def _page(
        self,
        table: Any,
        columns: Sequence[Any],
        where: list[Any],
        after: str | None,
        limit: int,
        ascending: bool,
    ) -> tuple[list[Row], bool] | None:
        async with self.engine.connect() as connection:
            if after:
                cursor = (
                    await connection.execute(select(table.c.created_us).where(table.c.id == after, *where))
                ).scalar()
                if cursor is None:
                    return None
                if ascending:
                    beyond = or_(
                        table.c.created_us > cursor, and_(table.c.created_us == cursor, table.c.id > after)
                    )
                else:
                    beyond = or_(
                        table.c.created_us < cursor, and_(table.c.created_us == cursor, table.c.id < after)
                    )
                where = [*where, beyond]
            order = (
                (table.c.created_us.asc(), table.c.id.asc())
                if ascending
                else (table.c.created_us.desc(), table.c.id.desc())
            )
            query = select(*columns).where(*where).order_by(*order).limit(limit + 1)
            rows = [dict(row) for row in (await connection.execute(query)).mappings().all()]
        return rows[:limit], len(rows) > limit

    # -- the runner's side ------------------------------------------------------------------------

    async def claim(self, runner_id: str, lease: float, exclude: Sequence[str] = ()) -> Row | None:
        """Take the oldest active batch whose lease is free or expired; None when there is none."""
        table = schema.batches
        now = time.time()
        free = or_(table.c.lease_expires.is_(None), table.c.lease_expires < now)
        query = select(table.c.id).where(table.c.status.in_(ACTIVE_STATUSES), free)
        if exclude:
            query = query.where(table.c.id.not_in(list(exclude)))
        query = query.order_by(table.c.created_us).limit(1)
        if self.postgres:
            query = query.with_for_update(skip_locked=True)
        async with self.engine.begin() as connection:
            batch_id = (await connection.execute(query)).scalar()
            if batch_id is None:
                return None
            # Compare-and-set: on SQLite another process may have taken it since the select.
            taken = await connection.execute(
                update(table)
                .where(table.c.id == batch_id, free)
                .values(lease_owner=runner_id, lease_expires=now + lease)
            )
            if taken.rowcount != 1:
                return None
            return await self._batch(connection, batch_id)

    async def renew(self, batch_id: str, runner_id: str, lease: float) -> str | None:
        """Extend this runner's lease; the batch's status, or None when the lease was lost."""
        table = schema.batches
        async with self.engine.begin() as connection:
            renewed = await connection.execute(
                update(table)
                .where(table.c.id == batch_id, table.c.lease_owner == runner_id)
                .values(lease_expires=time.time() + lease)
            )
            if renewed.rowcount != 1:
                return None
            return (await connection.execute(select(table.c.status).where(table.c.id == batch_id))).scalar()

    async def release(self, batch_id: str, runner_id: str) -> None:
        table = schema.batches
        async with self.engine.begin() as connection:
            await connection.execute(
                update(table)
                .where(table.c.id == batch_id, table.c.lease_owner == runner_id)
                .values(lease_owner=None, lease_expires=None)
            )

    async def fail_validation(self, batch_id: str, runner_id: str, errors: list[dict[str, Any]]) -> None:
        table = schema.batches
        async with self.engine.begin() as connection:
            await connection.execute(
                update(table)
                .where(table.c.id == batch_id, table.c.lease_owner == runner_id)
                .values(
                    status="failed",
                    failed_at=int(time.time()),
                    errors=orjson.dumps(errors).decode(),
                    lease_owner=None,
                    lease_expires=None,
                )
            )

    async def start_lines(self, batch_id: str, runner_id: str, input_lines: list[InputLine]) -> bool:
        """Store a validated batch's lines and move it to `in_progress`; False if the lease was lost."""
        table = schema.batches
        async with self.engine.begin() as connection:
            owned = await connection.execute(
                update(table)
                .where(table.c.id == batch_id, table.c.lease_owner == runner_id)
                .values(total=len(input_lines), in_progress_at=int(time.time()))
            )
            if owned.rowcount != 1:
                return False
            for start in range(0, len(input_lines), INSERT_CHUNK):
                chunk = input_lines[start : start + INSERT_CHUNK]
                await connection.execute(
                    schema.lines.insert(),
                    [
                        {
                            "batch_id": batch_id,
                            "line": line.line,
                            "custom_id": line.custom_id,
                            "body": line.body,
                            "state": "pending",
                        }
                        for line in chunk
                    ],
                )
            # A cancel that arrived while validating stays a cancel.
            await connection.execute(
                update(table)
                .where(table.c.id == batch_id, table.c.status == "validating")
                .values(status="in_progress")
            )
        return True

    async def pending_lines(self, batch_id: str, after: int, limit: int) -> list[InputLine]:
        """Lines not yet finished, in order, after line number `after`."""
        table = schema.lines
        query = (
            select(table.c.line, table.c.custom_id, table.c.body)
            .where(table.c.batch_id == batch_id, table.c.state == "pending", table.c.line > after)
            .order_by(table.c.line)
            .limit(limit)
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [InputLine(line, custom_id, bytes(body)) for line, custom_id, body in rows]

    async def record_results(self, results: Sequence[LineResult]) -> None:
        """Record finished lines and recount their batches, in one transaction.

        One statement for all lines (compiled once, executed many times). A line recorded already
        (by a runner that lost its lease) keeps its first result, and counts are recounted from the
        lines, so nothing is counted twice.
        """
        lines, batches = schema.lines, schema.batches
        record = (
            update(lines)
            .where(
                lines.c.batch_id == bindparam("b_batch"),
                lines.c.line == bindparam("b_line"),
                lines.c.state == "pending",
            )
            .values(state=bindparam("b_state"), result=bindparam("b_result"))
        )
        async with self.engine.begin() as connection:
            await connection.execute(
                record,
                [
                    {
                        "b_batch": result.batch_id,
                        "b_line": result.line,
                        "b_state": "ok" if result.ok else "error",
                        "b_result": result.result,
                    }
                    for result in results
                ],
            )
            for batch_id in {result.batch_id for result in results}:
                counts: dict[str, int] = dict(
                    (
                        await connection.execute(
                            select(lines.c.state, func.count())
                            .where(lines.c.batch_id == batch_id, lines.c.state != "pending")
                            .group_by(lines.c.state)
                        )
                    ).all()
                )
                await connection.execute(
                    update(batches)
                    .where(batches.c.id == batch_id, batches.c.status.not_in(FINAL_STATUSES))
                    .values(completed=counts.get("ok", 0), failed=counts.get("error", 0))
                )

    async def mark_finalizing(self, batch_id: str, runner_id: str) -> None:
        table = schema.batches
        async with self.engine.begin() as connection:
            await connection.execute(
                update(table)
                .where(
                    table.c.id == batch_id,
                    table.c.lease_owner == runner_id,
                    table.c.status == "in_progress",
                )
                .values(status="finalizing", finalizing_at=int(time.time()))
            )

    async def finalize(self, batch_id: str, runner_id: str, status: str) -> bool:
        """Write the output and error files and end the batch with `status`, in one transaction.

        On `expired`, lines that never ran go to the error file with code `batch_expired`.
        False when the lease was lost (another runner finalizes).
        """
        assert status in FINAL_STATUSES
        batches, lines = schema.batches, schema.lines
        now = int(time.time())
        async with self.engine.begin() as connection:
            batch = await self._batch(connection, batch_id)
            if batch is None or batch["lease_owner"] != runner_id or batch["status"] in FINAL_STATUSES:
                return False
            rows = (
                await connection.execute(
                    select(lines.c.custom_id, lines.c.state, lines.c.result)
                    .where(lines.c.batch_id == batch_id)
                    .order_by(lines.c.line)
                )
            ).all()
            output: list[bytes] = []
            errors: list[bytes] = []
            expired = 0
            for custom_id, state, result in rows:
                if state == "ok":
                    output.append(bytes(result))
                elif state == "error":
                    errors.append(bytes(result))
                elif status == "expired":
                    expired += 1
                    errors.append(
                        output_line(
                            custom_id,
                            None,
                            "",
                            None,
                            {
                                "code": "batch_expired",
                                "message": "This request could not be executed "
                                "before the completion window expired.",
                            },
                        )
                    )
            owner = batch["owner"]
            values: dict[str, Any] = {"status": status, "lease_owner": None, "lease_expires": None}
            for column, name, written in (
                ("output_file_id", "output", output),
                ("error_file_id", "error", errors),
            ):
                if written:
                    content = b"\n".join(written) + b"\n"
                    file = await self._insert_file(
                        connection, owner, f"{batch_id}_{name}.jsonl", "batch_output", content
                    )
                    values[column] = file["id"]
            if expired:
                values["failed"] = batches.c.failed + expired
            if batch["finalizing_at"] is None and status == "completed":
                values["finalizing_at"] = now
            values[f"{status}_at"] = now
            await connection.execute(update(batches).where(batches.c.id == batch_id).values(values))
        return True
