"""MySQL/MariaDB fixtures: the real server at IOGATE_TEST_MYSQL_URL, never mocked.

``mysql_url`` (tests/conftest.py) skips when nothing answers there, or fails
with ``IOGATE_REQUIRE_SERVICES=1``. ``my_raw`` is a plain asyncmy connection
for checking, from outside the manager, what the manager did.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from asyncmy.connection import Connection

from iogate.backends.mysql import AsyncMySQLManager, connect_mysql, parse_mysql_url
from iogate.core.config import DatabaseOptions


async def fetch(conn: Connection, sql: str, args: Any = None) -> list[Any]:
    cursor = conn.cursor()
    await cursor.execute(sql, args)
    rows = list(await cursor.fetchall()) if cursor.description else []
    await cursor.close()
    return rows


async def table_exists(conn: Connection, table: str) -> bool:
    return bool(await fetch(conn, "SHOW TABLES LIKE %s", (table,)))


async def running_statements(conn: Connection, marker: str) -> list[Any]:
    """Server threads whose current statement contains ``marker``."""
    return await fetch(
        conn,
        "SELECT id FROM information_schema.processlist"
        " WHERE info LIKE %s AND id <> CONNECTION_ID()",
        (f"%{marker}%",),
    )


@pytest.fixture
async def my_raw(mysql_url: str) -> AsyncIterator[Connection]:
    conn = await connect_mysql(parse_mysql_url(mysql_url), timeout=5, statement_timeout=None)
    try:
        yield conn
    finally:
        await conn.ensure_closed()


@pytest.fixture
async def my_table(my_raw: Connection, table_name: str) -> AsyncIterator[str]:
    await fetch(
        my_raw,
        f"CREATE TABLE {table_name} (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100), n INT)"
        " ENGINE=InnoDB",
    )
    try:
        yield table_name
    finally:
        await fetch(my_raw, f"DROP TABLE IF EXISTS {table_name}")


@pytest.fixture
async def my_manager(mysql_url: str) -> AsyncIterator[AsyncMySQLManager]:
    manager = AsyncMySQLManager(
        mysql_url,
        options=DatabaseOptions(max_connections=10, statement_timeout=5, acquire_timeout=5),
    )
    await manager.initialize_pool()
    try:
        yield manager
    finally:
        await manager.close()
