"""Guarded SQL on a real PostgreSQL: the parser's verdict, the transaction
iogate opens, a pooled connection handed back as it came, and the status of
a connection lost mid-statement."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from iogate import AsyncOperationOrchestrator
from iogate.backends.postgres import AsyncPostgreSQLManager
from iogate.core.config import DatabaseOptions
from iogate.core.result import Result
from iogate.core.sqlguard import Access
from tests.conftest import poll

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def one_conn(postgres_url: str) -> AsyncIterator[AsyncPostgreSQLManager]:
    """One pooled connection: every call of every caller shares it."""
    manager = AsyncPostgreSQLManager(
        postgres_url,
        options=DatabaseOptions(max_connections=1, statement_timeout=5, acquire_timeout=5),
    )
    await manager.initialize_pool()
    try:
        yield manager
    finally:
        await manager.close()


async def session_defaults(manager: AsyncPostgreSQLManager) -> dict[str, object]:
    result = await manager.execute_query(
        "SELECT current_setting('statement_timeout') AS statement_timeout,"
        " current_setting('search_path') AS search_path, current_user AS who,"
        " current_setting('transaction_read_only') AS tx_read_only,"
        " current_setting('default_transaction_read_only') AS default_read_only,"
        " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        "  AND pid = pg_backend_pid()) AS advisory_locks,"
        " (SELECT count(*) FROM pg_prepared_statements WHERE NOT from_sql) >= 0 AS ok",
        guard=Access.WRITE,
    )
    assert result.success, result.error
    return dict(result.data[0])


async def test_reader_runs_selects_and_nothing_else(
    one_conn: AsyncPostgreSQLManager, pg_raw: asyncpg.Connection, pg_table: str
) -> None:
    await pg_raw.execute(f"INSERT INTO {pg_table} (name, n) VALUES ('a', 1)")
    before = await session_defaults(one_conn)
    ok = await one_conn.execute_query(f"SELECT name FROM {pg_table}", guard=Access.READ)
    assert ok.success
    assert ok.data == [{"name": "a"}]
    hostile = [
        f"INSERT INTO {pg_table} (name) VALUES ('x')",
        f"ROLLBACK; INSERT INTO {pg_table} (name) VALUES ('x')",
        f"COMMIT; INSERT INTO {pg_table} (name) VALUES ('x')",
        f"WITH d AS (DELETE FROM {pg_table} RETURNING *) SELECT * FROM d",
        "SET statement_timeout = 0",
        "SELECT set_config('search_path', 'pg_temp', false)",
        f"CREATE TEMP TABLE {pg_table} (id int, name text, n int)",
        "SET ROLE pg_read_all_data",
        "SELECT pg_advisory_lock(42)",
        "LISTEN hostile",
        "DEALLOCATE ALL",
        "SELECT lo_from_bytea(0, 'x')",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    ]
    lo_before = await pg_raw.fetchval("SELECT count(*) FROM pg_largeobject_metadata")
    for query in hostile:
        result = await one_conn.execute_query(query, guard=Access.READ)
        assert not result.success, query
        assert result.error_type == "forbidden_statement", (query, result.error)
    assert await pg_raw.fetchval(f"SELECT count(*) FROM {pg_table}") == 1
    assert await pg_raw.fetchval("SELECT count(*) FROM pg_largeobject_metadata") == lo_before
    assert await session_defaults(one_conn) == before


async def test_the_database_refuses_a_write_the_parser_cannot_see(
    one_conn: AsyncPostgreSQLManager, pg_raw: asyncpg.Connection, table_name: str
) -> None:
    """nextval() looks like a read to any parser; READ ONLY stops it."""
    await pg_raw.execute(f"CREATE SEQUENCE {table_name}")
    try:
        result = await one_conn.execute_query(f"SELECT nextval('{table_name}')", guard=Access.READ)
        assert result.error_type == "read_only", result.error
        assert await pg_raw.fetchval(f"SELECT last_value FROM {table_name}") == 1
        assert not await pg_raw.fetchval(f"SELECT is_called FROM {table_name}")
    finally:
        await pg_raw.execute(f"DROP SEQUENCE {table_name}")


async def test_writer_writes_are_committed_and_session_statements_refused(
    one_conn: AsyncPostgreSQLManager, pg_raw: asyncpg.Connection, pg_table: str
) -> None:
    before = await session_defaults(one_conn)
    inserted = await one_conn.execute_query(
        f"INSERT INTO {pg_table} (name) VALUES ($1)", ["w"], guard=Access.WRITE
    )
    assert inserted.success
    assert inserted.rows_affected == 1
    assert await pg_raw.fetchval(f"SELECT count(*) FROM {pg_table} WHERE name = 'w'") == 1
    for query in [
        "SET search_path = pg_temp",
        "SELECT set_config('statement_timeout', '0', false)",
        f"CREATE TEMP TABLE {pg_table} (id int, name text, n int)",
        f"DROP TABLE {pg_table}",
        "BEGIN",
        "SELECT pg_advisory_lock(7)",
    ]:
        result = await one_conn.execute_query(query, guard=Access.WRITE)
        assert result.error_type == "forbidden_statement", (query, result.error)
    failed = await one_conn.execute_query(
        f"INSERT INTO {pg_table} (id, name) VALUES (1, 'dup'), (1, 'dup')", guard=Access.WRITE
    )
    assert failed.error_type == "query_error"
    assert await session_defaults(one_conn) == before
    assert await pg_raw.fetchval(f"SELECT count(*) FROM {pg_table}") == 1


async def test_guarded_transaction_and_execute_many(
    one_conn: AsyncPostgreSQLManager, pg_raw: asyncpg.Connection, pg_table: str
) -> None:
    async with one_conn.transaction(guard=Access.WRITE) as tx:
        ok = await tx.execute_query(f"INSERT INTO {pg_table} (name) VALUES ('in-tx')")
        refused = await tx.execute_query("COMMIT")
    assert ok.success
    assert refused.error_type == "forbidden_statement"
    assert tx.status == "rolled_back"
    assert await pg_raw.fetchval(f"SELECT count(*) FROM {pg_table}") == 0
    results = await one_conn.execute_many(
        f"INSERT INTO {pg_table} (name) VALUES ($1)", [["a"], ["b"]], guard=Access.READ
    )
    assert results is not None
    assert [r.error_type for r in results] == ["forbidden_statement"] * 2
    results = await one_conn.execute_many(
        f"INSERT INTO {pg_table} (name) VALUES ($1)", [["a"], ["b"]], guard=Access.WRITE
    )
    assert results is not None
    assert all(r.success for r in results)
    assert await pg_raw.fetchval(f"SELECT count(*) FROM {pg_table}") == 2


async def _kill_when_running(pg_raw: asyncpg.Connection, marker: str) -> None:
    query = (
        "SELECT pid FROM pg_stat_activity WHERE query LIKE $1 AND pid <> pg_backend_pid()"
        " AND state = 'active'"
    )

    async def running() -> bool:
        return await pg_raw.fetchval(query, f"%{marker}%") is not None

    assert await poll(running, timeout=5.0)
    await pg_raw.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE $1"
        " AND pid <> pg_backend_pid()",
        f"%{marker}%",
    )


async def _run_and_kill(
    manager: AsyncPostgreSQLManager, pg_raw: asyncpg.Connection, query: str, **kwargs: object
) -> Result:
    marker = uuid.uuid4().hex
    task = asyncio.create_task(
        manager.execute_query(f"{query} /* {marker} */", **kwargs)  # type: ignore[arg-type]
    )
    await _kill_when_running(pg_raw, marker)
    return await asyncio.wait_for(task, 10)


@pytest.mark.parametrize("guard", [Access.READ, Access.WRITE, None])
async def test_connection_killed_during_a_read_is_a_connection_error(
    one_conn: AsyncPostgreSQLManager, pg_raw: asyncpg.Connection, guard: Access | None
) -> None:
    result = await _run_and_kill(one_conn, pg_raw, "SELECT pg_sleep(5)", guard=guard)
    assert result.error_type == "connection_error", result.error
    after = await one_conn.execute_query("SELECT 1 AS one", guard=guard)
    assert after.success, after.error


async def test_connection_killed_during_read_only_call_is_a_connection_error(
    one_conn: AsyncPostgreSQLManager, pg_raw: asyncpg.Connection
) -> None:
    result = await _run_and_kill(one_conn, pg_raw, "SELECT pg_sleep(5)", read_only=True)
    assert result.error_type == "connection_error", result.error


async def test_connection_killed_during_a_write(
    one_conn: AsyncPostgreSQLManager, pg_raw: asyncpg.Connection, pg_table: str
) -> None:
    write = f"INSERT INTO {pg_table} (name) SELECT 'x' FROM pg_sleep(5)"
    # Guarded: the write ran in iogate's transaction, never committed.
    guarded = await _run_and_kill(one_conn, pg_raw, write, guard=Access.WRITE)
    assert guarded.error_type == "connection_error", guarded.error
    # Trusted autocommit: the statement may have been applied.
    trusted = await _run_and_kill(one_conn, pg_raw, write)
    assert trusted.error_type == "unknown_outcome", trusted.error
    assert await pg_raw.fetchval(f"SELECT count(*) FROM {pg_table}") == 0


async def test_read_url_serves_untrusted_reads_as_its_own_role(
    postgres_url: str, pg_raw: asyncpg.Connection, pg_table: str
) -> None:
    role = f"reader_{uuid.uuid4().hex[:8]}"
    await pg_raw.execute(f"CREATE ROLE {role} LOGIN")
    await pg_raw.execute(f"GRANT SELECT ON {pg_table} TO {role}")
    try:
        orchestrator = AsyncOperationOrchestrator()
        orchestrator.add_manager("db", AsyncPostgreSQLManager(postgres_url))
        reader_url = postgres_url.replace("postgres@", f"{role}@", 1)
        assert reader_url != postgres_url
        orchestrator.add_read_manager("db", AsyncPostgreSQLManager(reader_url))
        async with orchestrator:
            who = "SELECT current_user AS who"
            read = await orchestrator.execute_database_operation("db", who, guard=Access.READ)
            write = await orchestrator.execute_database_operation("db", who, guard=Access.WRITE)
            assert read.data == [{"who": role}]
            assert read.resource == "db"
            assert write.data == [{"who": "postgres"}]
            rows = await orchestrator.execute_database_operation(
                "db", f"SELECT count(*) AS n FROM {pg_table}", guard=Access.READ
            )
            assert rows.data == [{"n": 0}]
            # The grants hold even for what the parser lets through.
            denied = await orchestrator.execute_database_operation(
                "db", "SELECT count(*) FROM pg_authid", guard=Access.READ
            )
            assert denied.error_type == "query_error"
            assert "permission" in (denied.error or "")
    finally:
        await pg_raw.execute(f"DROP OWNED BY {role}")
        await pg_raw.execute(f"DROP ROLE {role}")


async def test_server_data_errors_are_named_as_the_server_names_them(
    one_conn: AsyncPostgreSQLManager,
) -> None:
    """A division by zero is the server's DataError, not a parameter asyncpg
    could not encode; a guarded statement's encoding error still rolls back."""
    for guard in (None, Access.READ, Access.WRITE):
        result = await one_conn.execute_query("SELECT 1/0 AS x", guard=guard)
        assert result.error_type == "query_error"
        assert "division by zero" in (result.error or "")
        assert "cannot encode" not in (result.error or "")
        bad = await one_conn.execute_query("SELECT $1::int AS x", ["nope"], guard=guard)
        assert bad.error_type == "query_error"
        assert "cannot encode" in (bad.error or "")
    after = await one_conn.execute_query("SELECT 2 AS two", guard=Access.READ)
    assert after.data == [{"two": 2}]


async def test_read_only_never_runs_a_script(
    one_conn: AsyncPostgreSQLManager, pg_raw: asyncpg.Connection, pg_table: str
) -> None:
    """Trusted code too: read_only=True never falls back to the simple
    protocol, where ROLLBACK; INSERT would escape the READ ONLY transaction."""
    await pg_raw.execute(f"INSERT INTO {pg_table} (name) VALUES ('keep')")
    script = f"ROLLBACK; DELETE FROM {pg_table}"
    result = await one_conn.execute_query(script, read_only=True)
    assert result.error_type == "query_error"
    assert await pg_raw.fetchval(f"SELECT count(*) FROM {pg_table}") == 1
    trusted = await one_conn.execute_query(f"SELECT 1; SELECT count(*) FROM {pg_table}")
    assert trusted.success  # without read_only a trusted script still runs
