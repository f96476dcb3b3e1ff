"""Typed parameters: what iogate answers can be sent back (issue 17).

PostgreSQL converts a value asyncpg cannot bind by the prepared statement's
parameter type (ISO 8601 text, numeric text, base64); named operations
declare types (``params = { id = "int" }``) checked before any I/O. Tested
on the real servers, through the library and through a real ``iogate serve``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from iogate import AsyncOperationOrchestrator, AsyncPostgreSQLManager, AsyncSQLiteManager
from iogate.backends.mysql import AsyncMySQLManager
from iogate.backends.postgres import statements as postgres_backend
from iogate.core.sqlguard import Access
from iogate.orchestrator.operations import execute_named_operation, register_operation
from tests.conftest import poll
from tests.security.support import ADMIN, WRITER, GatewayProcess, keys_toml, serve

TYPED_COLUMNS = (
    "id int PRIMARY KEY, at timestamptz, local timestamp, day date, clock time,"
    " span interval, blob bytea, amount numeric(10,2), ratio float8, flag bool,"
    " tags int[], label text"
)


@pytest.fixture
async def typed_table(pg_raw: asyncpg.Connection, table_name: str) -> AsyncIterator[str]:
    await pg_raw.execute(f"CREATE TABLE {table_name} ({TYPED_COLUMNS})")
    try:
        yield table_name
    finally:
        await pg_raw.execute(f"DROP TABLE IF EXISTS {table_name}")


def _insert(table: str) -> str:
    return (
        f"INSERT INTO {table} VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        " RETURNING *"
    )


JSON_ROW = [
    "1",  # int from numeric text
    "2024-05-01T12:30:00Z",
    "2024-05-01T12:30:00",
    "2024-05-01",
    "12:30:00",
    "PT1H30M",
    "aGVsbG8=",  # base64 of b"hello"
    "12.50",
    "0.25",
    "true",
    ["1", "2"],
    42,  # a number for text
]


async def test_postgres_reads_json_values_by_the_statement_types(
    pg_manager: AsyncPostgreSQLManager, typed_table: str, pg_raw: asyncpg.Connection
) -> None:
    result = await pg_manager.execute_query(_insert(typed_table), JSON_ROW)
    assert result.success, result.error
    row = await pg_raw.fetchrow(f"SELECT * FROM {typed_table}")
    assert row is not None
    assert dict(row) == {
        "id": 1,
        "at": dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC),
        "local": dt.datetime(2024, 5, 1, 12, 30),
        "day": dt.date(2024, 5, 1),
        "clock": dt.time(12, 30),
        "span": dt.timedelta(hours=1, minutes=30),
        "blob": b"hello",
        "amount": pytest.approx(12.5),
        "ratio": 0.25,
        "flag": True,
        "tags": [1, 2],
        "label": "42",
    }


async def test_what_iogate_answers_can_be_sent_back(
    pg_manager: AsyncPostgreSQLManager, typed_table: str
) -> None:
    inserted = await pg_manager.execute_query(_insert(typed_table), JSON_ROW)
    assert inserted.success, inserted.error
    answered = inserted.data[0]  # ISO text, seconds, base64, exact text
    assert isinstance(answered["at"], str)
    assert isinstance(answered["blob"], str)
    columns = [c for c in answered if c != "tags"]
    where = " AND ".join(f"{c} = ${i}" for i, c in enumerate(columns, 1))
    found = await pg_manager.execute_query(
        f"SELECT count(*) AS n FROM {typed_table} WHERE {where}",
        [answered[c] for c in columns],
    )
    assert found.success, found.error
    assert found.data == [{"n": 1}]


async def test_guarded_sql_converts_too(
    pg_manager: AsyncPostgreSQLManager, typed_table: str
) -> None:
    write = await pg_manager.execute_query(_insert(typed_table), JSON_ROW, guard=Access.WRITE)
    assert write.success, write.error
    read = await pg_manager.execute_query(
        f"SELECT id FROM {typed_table} WHERE at > $1 AND blob = $2",
        ["2024-01-01T00:00:00+00:00", "aGVsbG8="],
        guard=Access.READ,
    )
    assert read.success, read.error
    assert read.data == [{"id": 1}]


async def test_a_value_that_cannot_be_read_names_the_parameter(
    pg_manager: AsyncPostgreSQLManager, typed_table: str
) -> None:
    result = await pg_manager.execute_query(
        f"SELECT id FROM {typed_table} WHERE id = $1 AND at < $2", ["1", "yesterday"]
    )
    assert result.error_type == "query_error"
    assert "parameter $2 (timestamptz)" in (result.error or "")
    assert "yesterday" not in (result.error or "")  # values are not echoed
    # The connection went back to the pool and serves the next call.
    assert await poll(lambda: pg_manager.pool_stats()["in_use"] == 0)
    again = await pg_manager.execute_query(f"SELECT count(*) AS n FROM {typed_table}")
    assert again.data == [{"n": 0}]


async def test_typed_arguments_never_reach_the_conversion(
    pg_manager: AsyncPostgreSQLManager, typed_table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot path: a bind that succeeds costs no type introspection."""
    calls: list[Any] = []
    convert = postgres_backend.coerce_postgres_args

    def counting(types: Any, args: Any) -> Any:
        calls.append(types)
        return convert(types, args)

    monkeypatch.setattr(postgres_backend, "coerce_postgres_args", counting)
    query = f"SELECT id FROM {typed_table} WHERE id = $1 AND at < $2"
    for _ in range(3):
        typed = await pg_manager.execute_query(query, [1, dt.datetime.now(dt.UTC)])
        assert typed.success, typed.error
    assert calls == []
    text = await pg_manager.execute_query(query, ["1", "2024-05-01T00:00:00Z"])
    assert text.success, text.error
    assert calls == [["int4", "timestamptz"]]


# -- named operations ---------------------------------------------------------------


async def test_named_operation_types_on_postgres(
    postgres_url: str, pg_table: str, pg_raw: asyncpg.Connection
) -> None:
    await pg_raw.execute(f"INSERT INTO {pg_table} (id, name, n) VALUES (7, 'ada', 36)")
    async with AsyncOperationOrchestrator() as orchestrator:
        await orchestrator.add_database_manager("main", "postgresql", postgres_url)
        register_operation(
            orchestrator,
            "get_user",
            database="main",
            query=f"SELECT name FROM {pg_table} WHERE id = $1 AND n > $2",
            params={"id": "int", "older_than": "int"},
        )
        found = await execute_named_operation(
            orchestrator, "get_user", {"id": "7", "older_than": 1}
        )
        assert found.success, found.error
        assert found.data == [{"name": "ada"}]
        refused = await execute_named_operation(
            orchestrator, "get_user", {"id": "seven", "older_than": 1}
        )
        assert refused.error_type == "invalid_request"
        assert refused.error == "operation 'get_user': parameter 'id': expected an integer, " + (
            "got a string that is not one"
        )


@pytest.mark.parametrize("backend", ["sqlite", "mysql"])
async def test_named_operation_types_on_sqlite_and_mariadb(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, table_name: str
) -> None:
    """Dates, exact numbers and intervals reach each driver in a form it binds."""
    async with AsyncOperationOrchestrator() as orchestrator:
        if backend == "sqlite":
            manager: Any = AsyncSQLiteManager(str(tmp_path / "ops.db"))
            columns = "id INTEGER PRIMARY KEY, at TEXT, amount TEXT, span REAL, ref TEXT"
        else:
            manager = AsyncMySQLManager(request.getfixturevalue("mysql_url"))
            columns = (
                "id INT PRIMARY KEY, at DATETIME, amount DECIMAL(10,2), span TIME, ref CHAR(36)"
            )
        orchestrator.add_manager("main", manager)
        created = await orchestrator.execute_database_operation(
            "main", f"CREATE TABLE {table_name} ({columns})"
        )
        assert created.success, created.error
        try:
            register_operation(
                orchestrator,
                "add",
                database="main",
                query=f"INSERT INTO {table_name} VALUES ($1, $2, $3, $4, $5)",
                params={"id": "int", "at": "datetime", "amount": "decimal", "span": "timedelta",
                        "ref": "uuid"},
            )  # fmt: skip
            added = await execute_named_operation(
                orchestrator,
                "add",
                {
                    "id": "1",
                    "at": "2024-05-01T12:30:00",
                    "amount": "12.50",
                    "span": 90,
                    "ref": "12345678-1234-5678-1234-567812345678",
                },
            )
            assert added.success, added.error
            assert added.rows_affected == 1
            row = await orchestrator.execute_database_operation(
                "main", f"SELECT id, at, amount, span, ref FROM {table_name}"
            )
            assert row.success, row.error
            assert row.data == [
                {
                    "id": 1,
                    "at": "2024-05-01T12:30:00",
                    "amount": "12.50",
                    "span": 90.0,
                    "ref": "12345678-1234-5678-1234-567812345678",
                }
            ]
        finally:
            await orchestrator.execute_database_operation("main", f"DROP TABLE {table_name}")


# -- over HTTP ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("typed")
    _raw_run(
        postgres_url, f"DROP TABLE IF EXISTS typed_http; CREATE TABLE typed_http ({TYPED_COLUMNS})"
    )
    config = f"""
[databases.pg]
type = "postgresql"
url = "{postgres_url}"

[operations.since]
database = "pg"
query = "SELECT id FROM typed_http WHERE id = $1 AND at >= $2 AND blob = $3"
params = {{ id = "int", since = "datetime", blob = "bytes" }}
description = "Rows of one id since a moment"

[operations.untyped]
database = "pg"
query = "SELECT $1::text AS v"
params = ["v"]
""" + keys_toml(["db:pg:read"])
    try:
        with serve(workdir, config) as server:
            yield server
    finally:
        _raw_run(postgres_url, "DROP TABLE IF EXISTS typed_http")


def _raw_run(url: str, sql: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.mark.parametrize("key", [ADMIN, WRITER], ids=["trusted", "guarded"])
def test_http_round_trip_on_postgres(gateway: GatewayProcess, key: str) -> None:
    http = gateway.gateway
    wrote = http.sql("pg", _insert("typed_http"), JSON_ROW, key=key)
    assert wrote.status_code == 200, wrote.text
    answered = wrote.json()["data"][0]
    try:
        columns = [c for c in answered if c != "tags"]
        where = " AND ".join(f"{c} = ${i}" for i, c in enumerate(columns, 1))
        found = http.sql(
            "pg", f"SELECT count(*) AS n FROM typed_http WHERE {where}",
            [answered[c] for c in columns], key=key,
        )  # fmt: skip
        assert found.status_code == 200, found.text
        assert found.json()["data"] == [{"n": 1}]
        bad = http.sql("pg", "SELECT $1::timestamptz AS t", ["not a time"], key=key)
        assert bad.status_code == 400, bad.text
        assert "parameter $1 (timestamptz)" in bad.json()["error"]
    finally:
        http.sql("pg", "DELETE FROM typed_http", key=ADMIN)


def test_http_named_operation_types(gateway: GatewayProcess) -> None:
    http = gateway.gateway
    assert http.sql("pg", _insert("typed_http"), JSON_ROW, key=ADMIN).status_code == 200
    try:
        body = {"id": "1", "since": "2024-01-01T00:00:00Z", "blob": "aGVsbG8="}
        ran = http.operation("since", body, key=WRITER)
        assert ran.status_code == 200, ran.text
        assert ran.json()["data"] == [{"id": 1}]
        wrong = http.operation("since", {**body, "since": "last week"}, key=WRITER)
        assert wrong.status_code == 422, wrong.text
        assert wrong.json()["error"] == (
            "operation 'since': parameter 'since': expected an ISO 8601 date-time such as "
            "2024-05-01T12:00:00+00:00, got a string that is not one"
        )
    finally:
        http.sql("pg", "DELETE FROM typed_http", key=ADMIN)


def test_http_operations_list_and_openapi_show_the_types(gateway: GatewayProcess) -> None:
    client = gateway.gateway.client
    listed = client.get("/operations", headers={"Authorization": f"Bearer {WRITER}"})
    assert listed.status_code == 200, listed.text
    by_name = {op["name"]: op for op in listed.json()["operations"]}
    assert by_name["since"]["params"] == [
        {"name": "id", "required": True, "type": "int"},
        {"name": "since", "required": True, "type": "datetime"},
        {"name": "blob", "required": True, "type": "bytes"},
    ]
    assert by_name["untyped"]["params"] == [{"name": "v", "required": True, "type": None}]

    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    since = schemas["OperationParams.since"]
    assert since["properties"]["since"] == {"type": ["string", "null"], "format": "date-time"}
    assert since["properties"]["blob"]["contentEncoding"] == "base64"
    assert since["required"] == ["id", "since", "blob"]
    assert since["description"] == "Rows of one id since a moment"
    body = document["paths"]["/operations/{name}"]["post"]["requestBody"]["content"]
    alternatives = body["application/json"]["schema"]["anyOf"]
    assert {"$ref": "#/components/schemas/OperationParams.since"} in alternatives
    assert {"type": "null"} in alternatives  # the route still takes what it took
    assert "last_insert_id" in schemas["OperationResult"]["required"]
