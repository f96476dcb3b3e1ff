"""AsyncMySQLManager against the real MariaDB/MySQL server."""

from __future__ import annotations

import asyncio
import time

import pytest
from asyncmy.connection import Connection

from iogate.backends.mysql import AsyncMySQLManager
from iogate.core.config import DatabaseOptions
from iogate.core.deadline import Deadline
from iogate.orchestrator.orchestrator import DatabaseType, create_database_manager
from tests.conftest import free_port, poll
from tests.integration.mysql.conftest import fetch, running_statements, table_exists

pytestmark = pytest.mark.mysql


async def test_seed_style_queries_return_rows_as_dicts(mysql_url: str, my_table: str) -> None:
    manager = AsyncMySQLManager(mysql_url, max_connections=20)
    await manager.initialize_pool()
    try:
        insert = await manager.execute_query(
            f"INSERT INTO {my_table} (name, n) VALUES ($1, $2)", {"1": "ada", "2": 36}
        )
        assert insert.success, insert.error
        assert insert.rows_affected == 1
        assert insert.data == []
        user_id = insert.last_insert_id
        assert user_id is not None
        for query in (
            f"SELECT * FROM {my_table} WHERE id = $1",
            f"SELECT * FROM {my_table} WHERE id = ?",
            f"SELECT * FROM {my_table} WHERE id = %s",
        ):
            result = await manager.execute_query(query, {"1": user_id})
            assert result.success, result.error
            assert result.data == [{"id": user_id, "name": "ada", "n": 36}]
            assert result.rows_affected is None
        update = await manager.execute_query(
            f"UPDATE {my_table} SET n = ? WHERE name = ?", [36, "ada"]
        )
        # Matched rows, as PostgreSQL reports them, though nothing changed.
        assert update.success
        assert update.rows_affected == 1
        assert update.data == []
    finally:
        await manager.close()


async def test_values_are_json_friendly(my_manager: AsyncMySQLManager) -> None:
    result = await my_manager.execute_query(
        "SELECT CAST(? AS DECIMAL(10,2)) AS price, TIMESTAMP('2026-01-02 03:04:05') AS at,"
        " DATE('2026-01-02') AS day, x'00ff' AS raw, NULL AS nothing, ? AS text",
        ["12.5", "é"],
    )
    assert result.success, result.error
    assert result.data == [
        {
            "price": "12.50",
            "at": "2026-01-02T03:04:05",
            "day": "2026-01-02",
            "raw": "AP8=",
            "nothing": None,
            "text": "é",
        }
    ]
    assert result.to_dict()["data"] == result.data


async def test_literal_percent_signs_work_with_and_without_parameters(
    my_manager: AsyncMySQLManager, my_table: str
) -> None:
    await my_manager.execute_query(f"INSERT INTO {my_table} (name, n) VALUES ('a%b', 7)")
    plain = await my_manager.execute_query(
        f"SELECT name, n % 4 AS m FROM {my_table} WHERE name LIKE 'a%'"
    )
    assert plain.success, plain.error
    assert plain.data == [{"name": "a%b", "m": 3}]
    with_params = await my_manager.execute_query(
        f"SELECT name, n % 4 AS m, '%s' AS lit FROM {my_table} WHERE name LIKE 'a%' AND n = ?",
        [7],
    )
    assert with_params.success, with_params.error
    assert with_params.data == [{"name": "a%b", "m": 3, "lit": "%s"}]


async def test_wrong_parameter_count_is_an_invalid_request(my_manager: AsyncMySQLManager) -> None:
    result = await my_manager.execute_query("SELECT ?, ?", {"1": 1})
    assert not result.success
    assert result.error_type == "invalid_request"
    assert result.error == "query expects 2 parameters, got 1"
    gap = await my_manager.execute_query("SELECT ?, ?", {"1": 1, "3": 3})
    assert gap.error_type == "invalid_request"
    assert "missing 2" in (gap.error or "")


async def test_bad_query_returns_a_failed_result_with_the_mysql_code(
    my_manager: AsyncMySQLManager,
) -> None:
    result = await my_manager.execute_query("SELECT * FROM no_such_table_at_all")
    assert not result.success
    assert result.error_type == "query_error"
    assert (result.error or "").startswith("(1146)")
    assert result.resource == my_manager.name
    # The connection that saw the error is fine.
    assert (await my_manager.execute_query("SELECT 1 AS one")).data == [{"one": 1}]
    assert my_manager.pool_stats()["in_use"] == 0


async def test_multiple_statements_in_one_call_are_refused_by_the_server(
    my_manager: AsyncMySQLManager, my_raw: Connection, my_table: str
) -> None:
    result = await my_manager.execute_query(f"SELECT 1; DROP TABLE {my_table}")
    assert not result.success
    assert result.error_type == "query_error"
    assert await table_exists(my_raw, my_table)


async def test_hundred_concurrent_queries_through_ten_connections(mysql_url: str) -> None:
    manager = AsyncMySQLManager(mysql_url, max_connections=10)
    await manager.initialize_pool()
    try:
        results = await asyncio.gather(
            *(manager.execute_query("SELECT ? * 2 AS v, SLEEP(0.01) AS s", [i]) for i in range(100))
        )
        assert all(r.success for r in results), [r.error for r in results if not r.success]
        assert [r.data[0]["v"] for r in results] == [i * 2 for i in range(100)]
        stats = manager.pool_stats()
        assert stats["size"] <= 10
        assert stats["in_use"] == 0
    finally:
        await manager.close()


async def test_max_rows_truncates(my_manager: AsyncMySQLManager) -> None:
    query = (
        "WITH RECURSIVE s(seq) AS (SELECT 1 UNION ALL SELECT seq + 1 FROM s WHERE seq < 10)"
        " SELECT seq FROM s"
    )
    result = await my_manager.execute_query(query, max_rows=3)
    assert result.success, result.error
    assert result.truncated
    assert [row["seq"] for row in result.data] == [1, 2, 3]


async def test_transaction_commits(
    my_manager: AsyncMySQLManager, my_raw: Connection, my_table: str
) -> None:
    async with my_manager.transaction() as tx:
        first = await tx.execute_query(f"INSERT INTO {my_table} (name) VALUES (?)", ["a"])
        second = await tx.execute_query(f"INSERT INTO {my_table} (name) VALUES (?)", ["b"])
        assert first.success
        assert second.success
    assert tx.status == "committed"
    assert await fetch(my_raw, f"SELECT name FROM {my_table} ORDER BY id") == [("a",), ("b",)]


async def test_transaction_with_a_failing_statement_leaves_no_trace(
    my_manager: AsyncMySQLManager, my_raw: Connection, my_table: str
) -> None:
    async with my_manager.transaction() as tx:
        ok = await tx.execute_query(f"INSERT INTO {my_table} (name) VALUES (?)", ["kept?"])
        assert ok.success, ok.error
        bad = await tx.execute_query(f"INSERT INTO {my_table} (no_such_column) VALUES (1)")
        assert bad.error_type == "query_error"
    assert tx.status == "rolled_back"
    assert await fetch(my_raw, f"SELECT COUNT(*) FROM {my_table}") == [(0,)]
    assert await poll(lambda: my_manager.pool_stats()["in_use"] == 0)


async def test_exception_in_transaction_block_rolls_back(
    my_manager: AsyncMySQLManager, my_raw: Connection, my_table: str
) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with my_manager.transaction() as tx:
            await tx.execute_query(f"INSERT INTO {my_table} (name) VALUES ('x')")
            raise RuntimeError("boom")
    assert tx.status == "rolled_back"
    assert await poll(lambda: my_manager.pool_stats()["in_use"] == 0)
    assert await fetch(my_raw, f"SELECT COUNT(*) FROM {my_table}") == [(0,)]


async def test_statement_that_ends_the_transaction_stops_the_block(
    my_manager: AsyncMySQLManager, my_raw: Connection, my_table: str
) -> None:
    async with my_manager.transaction(read_only=True) as tx:
        commit = await tx.execute_query("COMMIT")
        assert not commit.success
        escape = await tx.execute_query("SET SESSION TRANSACTION READ WRITE")
        write = await tx.execute_query(f"INSERT INTO {my_table} (name) VALUES ('escaped')")
        assert not escape.success
        assert write.error_type == "invalid_request"
    assert tx.status == "rolled_back"
    assert await fetch(my_raw, f"SELECT COUNT(*) FROM {my_table}") == [(0,)]


async def test_statement_timeout_fails_promptly_and_keeps_the_connection(mysql_url: str) -> None:
    manager = AsyncMySQLManager(
        mysql_url, options=DatabaseOptions(max_connections=1, statement_timeout=0.3)
    )
    await manager.initialize_pool()
    try:
        before = await manager.execute_query("SELECT CONNECTION_ID() AS id")
        started = time.monotonic()
        result = await manager.execute_query("SELECT SLEEP(5)")
        elapsed = time.monotonic() - started
        assert not result.success
        assert result.error_type == "timeout"
        assert elapsed < 2.0
        after = await manager.execute_query("SELECT CONNECTION_ID() AS id")
        assert after.success
        assert after.data == before.data  # the same server session served both
    finally:
        await manager.close()


async def test_deadline_shorter_than_statement_timeout_kills_the_statement(
    my_manager: AsyncMySQLManager, my_raw: Connection
) -> None:
    marker = "deadline_probe_7f3a"
    started = time.monotonic()
    result = await my_manager.execute_query(f"SELECT SLEEP(30) AS {marker}", deadline=Deadline(0.3))
    assert not result.success
    assert result.error_type == "timeout"
    assert time.monotonic() - started < 2.0
    assert my_manager.pool_stats()["in_use"] == 0
    # The interrupted connection was discarded and its server thread killed.
    assert await poll(lambda: _gone(my_raw, marker), timeout=2)
    assert (await my_manager.execute_query("SELECT 1 AS one")).success


async def _gone(raw: Connection, marker: str) -> bool:
    return not await running_statements(raw, marker)


async def test_unreachable_server_fails_within_acquire_timeout() -> None:
    url = f"mysql://root:s3cret-pw@127.0.0.1:{free_port()}/test"
    manager = AsyncMySQLManager(url, options=DatabaseOptions(min_connections=0, acquire_timeout=1))
    try:
        started = time.monotonic()
        result = await manager.execute_query("SELECT 1")
        assert time.monotonic() - started < 2.0
        assert not result.success
        assert result.error_type == "connection_error"
        assert "s3cret-pw" not in (result.error or "")
        assert "s3cret-pw" not in repr(manager)
    finally:
        await manager.close()


async def test_silent_server_fails_within_acquire_timeout() -> None:
    # Accepts TCP connections and never says a word: the handshake hangs.
    accepted: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    manager = AsyncMySQLManager(
        f"mysql://root@127.0.0.1:{port}/test",
        options=DatabaseOptions(min_connections=0, acquire_timeout=0.5),
    )
    try:
        started = time.monotonic()
        result = await manager.execute_query("SELECT 1")
        assert time.monotonic() - started < 1.5
        assert not result.success
        assert result.error_type == "connection_error"
        assert manager.pool_stats()["size"] == 0
    finally:
        await manager.close()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_wrong_password_is_a_connection_error_without_the_password(mysql_url: str) -> None:
    bad = mysql_url.replace("://root@", "://iogate_nobody:Wr0ng-Pass@", 1)
    manager = AsyncMySQLManager(bad, options=DatabaseOptions(min_connections=0))
    try:
        result = await manager.execute_query("SELECT 1")
        assert result.error_type == "connection_error"
        assert "Wr0ng-Pass" not in (result.error or "")
    finally:
        await manager.close()


async def test_read_only_refuses_writes_and_ddl(
    my_manager: AsyncMySQLManager, my_raw: Connection, my_table: str, table_name: str
) -> None:
    created = f"{table_name}_ro"
    ddl = await my_manager.execute_query(f"CREATE TABLE {created} (a INT)", read_only=True)
    assert not ddl.success
    assert ddl.error_type == "read_only"
    assert not await table_exists(my_raw, created)
    write = await my_manager.execute_query(
        f"INSERT INTO {my_table} (name) VALUES (?)", ["x"], read_only=True
    )
    assert write.error_type == "read_only"
    read = await my_manager.execute_query(f"SELECT COUNT(*) AS c FROM {my_table}", read_only=True)
    assert read.data == [{"c": 0}]
    # The same pooled connections serve writers again afterwards.
    assert (await my_manager.execute_query(f"INSERT INTO {my_table} (name) VALUES ('w')")).success


async def test_read_only_session_cannot_be_switched_back_by_a_query(
    mysql_url: str, my_raw: Connection, my_table: str
) -> None:
    manager = AsyncMySQLManager(mysql_url, max_connections=1)
    await manager.initialize_pool()
    try:
        switch = await manager.execute_query("SET SESSION TRANSACTION READ WRITE", read_only=True)
        assert switch.success  # a SET is not a write...
        write = await manager.execute_query(
            f"INSERT INTO {my_table} (name) VALUES ('x')", read_only=True
        )
        assert write.error_type == "read_only"  # ...and it does not outlive its call
    finally:
        await manager.close()
    assert await fetch(my_raw, f"SELECT COUNT(*) FROM {my_table}") == [(0,)]


async def test_read_only_manager_and_transaction(
    mysql_url: str, my_raw: Connection, table_name: str
) -> None:
    created = f"{table_name}_rotx"
    manager = AsyncMySQLManager(mysql_url, options=DatabaseOptions(read_only=True))
    await manager.initialize_pool()
    try:
        refused = await manager.execute_query(f"CREATE TABLE {created} (a INT)")
        assert refused.error_type == "read_only"
        async with manager.transaction() as tx:
            in_tx = await tx.execute_query(f"CREATE TABLE {created} (a INT)")
            assert in_tx.error_type == "read_only"
        assert tx.status == "rolled_back"
    finally:
        await manager.close()
    assert not await table_exists(my_raw, created)


async def test_session_left_in_a_transaction_is_reset(
    mysql_url: str, my_raw: Connection, my_table: str
) -> None:
    manager = AsyncMySQLManager(mysql_url, max_connections=1)
    await manager.initialize_pool()
    try:
        assert (await manager.execute_query("SET autocommit = 0")).success
        await poll(lambda: manager.pool_stats()["idle"] == 1)
        insert = await manager.execute_query(f"INSERT INTO {my_table} (name) VALUES ('c')")
        assert insert.success
        assert (await manager.execute_query("START TRANSACTION")).success
        await poll(lambda: manager.pool_stats()["idle"] == 1)
        # Visible from another session: autocommit was restored before the insert.
        assert await fetch(my_raw, f"SELECT name FROM {my_table}") == [("c",)]
    finally:
        await manager.close()


async def test_cancellation_leaves_no_connection_checked_out(
    my_manager: AsyncMySQLManager, my_raw: Connection
) -> None:
    marker = "cancel_probe_51c2"
    task = asyncio.create_task(my_manager.execute_query(f"SELECT SLEEP(30) AS {marker}"))
    assert await poll(lambda: running_statements(my_raw, marker), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert my_manager.pool_stats()["in_use"] == 0
    assert await poll(lambda: _gone(my_raw, marker), timeout=2)
    assert (await my_manager.execute_query("SELECT 1 AS one")).data == [{"one": 1}]


async def test_ping_and_stats(my_manager: AsyncMySQLManager) -> None:
    await my_manager.ping(timeout=2)
    await my_manager.execute_query("SELECT 1")
    stats = my_manager.get_stats()
    assert stats["type"] == "mysql"
    assert stats["pool"]["max_size"] == 10


async def test_closed_manager_returns_failed_results(mysql_url: str) -> None:
    manager = AsyncMySQLManager(mysql_url)
    await manager.initialize_pool()
    await manager.close()
    await manager.close()  # idempotent
    result = await manager.execute_query("SELECT 1")
    assert not result.success
    assert result.error_type == "closed"


async def test_orchestrator_factory_builds_a_mysql_manager(mysql_url: str) -> None:
    manager = create_database_manager(
        "shop", DatabaseType.MYSQL, mysql_url, max_connections=3, statement_timeout=2
    )
    assert isinstance(manager, AsyncMySQLManager)
    async with manager:
        result = await manager.execute_query("SELECT ? AS v", {"1": "ok"})
    assert result.data == [{"v": "ok"}]
    assert result.resource == "shop"
