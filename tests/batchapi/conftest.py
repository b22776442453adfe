"""Fixtures of the Batches API suite: a database per test (SQLite file or a fresh PostgreSQL database)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.batch.support import reachable

#: The shared PostgreSQL server (trust auth); each test gets a database of its own on it.
POSTGRES = "postgresql://postgres@127.0.0.1:5432"


async def _admin(statement: str) -> None:
    connection = await asyncpg.connect(f"{POSTGRES}/test")
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def postgres_database() -> str:
    """A new, empty database on the shared server; its URL."""
    name = f"lingo_batchapi_{uuid.uuid4().hex[:12]}"
    await _admin(f'CREATE DATABASE "{name}"')
    return f"{POSTGRES}/{name}"


async def drop_postgres_database(url: str) -> None:
    name = url.rpartition("/")[2]
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    if not reachable(POSTGRES, 5432):
        pytest.skip("PostgreSQL is not running at 127.0.0.1:5432 (make services starts it)")
    url = await postgres_database()
    yield url
    await drop_postgres_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """`LINGO_DATABASE_URL` for one test: a SQLite file in its temporary folder, or a PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'lingo.db'}"
        return
    if not reachable(POSTGRES, 5432):
        pytest.skip("PostgreSQL is not running at 127.0.0.1:5432 (make services starts it)")
    url = await postgres_database()
    yield url
    await drop_postgres_database(url)
