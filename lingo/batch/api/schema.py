"""The Batches API's tables and their versioned migrations.

`schema_version` holds one row: the number of migrations applied. At start-up every migration past it
runs, in order, in one transaction each, so a database written by an older lingo is brought up to date
and a newer one is refused (a rollback of lingo must not write into a schema it does not know).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    select,
)

metadata = MetaData()

#: One row: how many migrations were applied.
schema_version = Table("lingo_schema_version", metadata, Column("version", Integer, nullable=False))

#: Uploaded input files and the output/error files lingo writes; contents live in the row, so every
#: lingo replica sharing the database can read them.
files = Table(
    "lingo_files",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("filename", Text, nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("content", LargeBinary, nullable=False),
    Index("lingo_files_listing", "owner", "created_us"),
)

#: One row per batch: the OpenAI Batch object's fields, plus the lease of the process running it.
batches = Table(
    "lingo_batches",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("endpoint", String(128), nullable=False),
    Column("input_file_id", String(64), nullable=False),
    Column("completion_window", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("metadata", Text),
    Column("errors", Text),
    Column("output_file_id", String(64)),
    Column("error_file_id", String(64)),
    Column("total", Integer, nullable=False, default=0),
    Column("completed", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),
    Column("created_at", BigInteger, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("in_progress_at", BigInteger),
    Column("finalizing_at", BigInteger),
    Column("completed_at", BigInteger),
    Column("failed_at", BigInteger),
    Column("expired_at", BigInteger),
    Column("cancelling_at", BigInteger),
    Column("cancelled_at", BigInteger),
    Column("lease_owner", String(64)),
    Column("lease_expires", Float),
    Index("lingo_batches_listing", "owner", "created_us"),
    Index("lingo_batches_claim", "status"),
)

#: One row per input line: its request body and, once it finished, its output line.
lines = Table(
    "lingo_batch_lines",
    metadata,
    Column("batch_id", String(64), primary_key=True),
    Column("line", Integer, primary_key=True),
    Column("custom_id", Text, nullable=False),
    Column("body", LargeBinary, nullable=False),
    #: `pending` until it finished, then `ok` (output file) or `error` (error file).
    Column("state", String(8), nullable=False),
    Column("result", LargeBinary),
    Index("lingo_batch_lines_state", "batch_id", "state", "line"),
)


def _create_v1(connection: Connection) -> None:
    metadata.create_all(connection, tables=[files, batches, lines])


#: Migrations in order; the schema version is the number applied. Append, never edit.
MIGRATIONS: tuple[Callable[[Connection], None], ...] = (_create_v1,)


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer lingo."""


def migrate(connection: Connection) -> int:
    """Apply the migrations the database lacks (run inside one transaction); the resulting version."""
    schema_version.create(connection, checkfirst=True)
    current = connection.execute(select(schema_version.c.version)).scalar()
    if current is None:
        connection.execute(schema_version.insert().values(version=0))
        current = 0
    if current > len(MIGRATIONS):
        raise SchemaTooNew(
            f"database schema version {current} is newer than this lingo knows ({len(MIGRATIONS)})"
        )
    for step in MIGRATIONS[current:]:
        step(connection)
    connection.execute(schema_version.update().values(version=len(MIGRATIONS)))
    return len(MIGRATIONS)
